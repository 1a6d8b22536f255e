"""Latency of one-step ×4 super-resolution per 512² output, split by stage.

Stages as ``vosr.infer`` runs them on one tile: bicubic upsampling of the LR input, the
autoencoder's encode of it, DINOv2 tokens, one transformer pass (the one-step student), the
decode. Random weights (timing only; said so in the output).

    python benchmarks/infer_latency.py                      # GPU: 0.5B student, SD-2.1 VAE, batch 1 and 8, bf16
    python benchmarks/infer_latency.py --batch 1 4 --compile
    python benchmarks/infer_latency.py --preset tiny --size 128   # what runs on a CPU (the default there)

The paper reports ~0.094 s per image for its one-step models.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from random_parts import UNUSED_VAE_PATH, random_frozen_parts

from vosr.config import load_run_config
from vosr.method.flow import sample_one_step
from vosr.training.setup import FrozenParts, build_model

REPO = Path(__file__).resolve().parents[1]

STAGES = ("upsample", "encode", "semantic", "transformer", "decode")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "0.5B"), default="0.5B" if gpu else "tiny",
                   help="model preset (default: 0.5B on GPU, tiny on CPU)")
    p.add_argument("--size", type=int, default=512 if gpu else 128, help="output side in pixels")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8] if gpu else [1, 4])
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16" if gpu else "fp32")
    p.add_argument("--repeats", type=int, default=20 if gpu else 3)
    p.add_argument("--warmup", type=int, default=3 if gpu else 1)
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    tiny = args.preset == "tiny"
    base = REPO / ("configs/tiny_distill.yaml" if tiny else "configs/distill/vosr_0.5b_onestep.yaml")
    overrides = [f"model.preset={args.preset}", f"data.crop_size={args.size}", "semantic.random_init=true",
                 "semantic.path=null", f"model.compile={str(args.compile).lower()}"]
    if not tiny:
        overrides.append(UNUSED_VAE_PATH)
    cfg = load_run_config(str(base), overrides)
    parts = random_frozen_parts(cfg, device, dtype)
    model = build_model(cfg, parts, with_r=True).to(device, dtype=dtype).eval()
    return cfg, parts, model


@torch.inference_mode()
def time_batch(parts: FrozenParts, model, batch: int, size: int, args, device, dtype) -> dict[str, float]:
    """Mean seconds per call of each stage for one batch of ``batch`` images."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lr = torch.rand(batch, 3, size // 4, size // 4, device=device)
    totals = dict.fromkeys(STAGES, 0.0)
    for i in range(args.warmup + args.repeats):
        marks = [time.perf_counter()]

        def mark(marks: list[float] = marks) -> None:
            sync()
            marks.append(time.perf_counter())

        lr_up = F.interpolate(lr, size=(size, size), mode="bicubic").clamp(0, 1).to(dtype)
        mark()
        z_lq = parts.autoencoder.encode(lr_up)
        mark()
        sem = parts.semantic(lr_up)
        mark()
        noise = torch.randn_like(z_lq)
        z0 = sample_one_step(model, z_lq, sem, noise)
        mark()
        parts.autoencoder.decode(z0)
        mark()
        if i >= args.warmup:
            for stage, (a, b) in zip(STAGES, zip(marks, marks[1:])):
                totals[stage] += b - a
    return {k: v / args.repeats for k, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg, parts, model = build(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    grid = args.size // parts.autoencoder.downsample
    print(f"# one-step x4 inference: preset {args.preset}, {args.size}^2 output ({grid}x{grid} latent, "
          f"{parts.semantic.num_tokens} DINOv2 tokens), {args.dtype}, compile={args.compile}, on {name}; "
          f"RANDOM weights (timing only)")
    print(f"{'batch':>5} " + " ".join(f"{s:>11}" for s in STAGES) + f" {'total':>9} {'ms/image':>9} {'images/s':>9}")
    for batch in args.batch:
        t = time_batch(parts, model, batch, args.size, args, device, dtype)
        total = sum(t.values())
        print(f"{batch:>5} " + " ".join(f"{1000 * t[s]:>9.1f}ms" for s in STAGES)
              + f" {1000 * total:>7.1f}ms {1000 * total / batch:>9.1f} {batch / total:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
