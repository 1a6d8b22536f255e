"""Latency of one-step ×4 super-resolution per 512² output, split by stage.

Stages as ``vosr.infer`` runs them on one tile: bicubic upsampling of the LR input, the
autoencoder's encode of it, DINOv2 tokens, one transformer pass (the one-step student), the
decode. Random weights (timing only; said so in the output).

    python benchmarks/infer_latency.py                      # GPU: 0.5B student, SD-2.1 VAE, batch 1 and 8, bf16
    python benchmarks/infer_latency.py --batch 1 4 --compile  # eager, then torch.compile'd (once per shape)
    python benchmarks/infer_latency.py --preset tiny --size 128   # what runs on a CPU (the default there)

With ``--compile`` every batch is timed eager and compiled (the transformer, the autoencoder's encode and
decode and the semantic encoder, as ``vosr.infer --compile`` does), with the compile time, the ratio and
the largest output difference; on CUDA a ``cuda-graph`` row replays the whole one-step pipeline captured
at batch 1 (``vosr.inference.fast``). Times are wall-clock on GPUs; on the CPU they are in CPU time of
a possibly busy machine, so read the eager baseline and the ratio of the same run together.

The paper reports ~0.094 s per image for its one-step models.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd pipeline")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    tiny = args.preset == "tiny"
    base = REPO / ("configs/tiny_distill.yaml" if tiny else "configs/distill/vosr_0.5b_onestep.yaml")
    overrides = [f"model.preset={args.preset}", f"data.crop_size={args.size}", "semantic.random_init=true",
                 "semantic.path=null", "model.compile=false"]
    if not tiny:
        overrides.append(UNUSED_VAE_PATH)
    cfg = load_run_config(str(base), overrides)
    parts = random_frozen_parts(cfg, device, dtype)
    model = build_model(cfg, parts, with_r=True).to(device, dtype=dtype).eval()
    return cfg, parts, model


@dataclass
class Stages:
    """The callables of one-step inference: eager modules or their compiled versions."""

    encode: Callable
    semantic: Callable
    model: Callable
    decode: Callable


def compiled(parts: FrozenParts, model, backend: str) -> Stages:
    kw = {"backend": backend, "dynamic": False}
    return Stages(encode=torch.compile(parts.autoencoder.encode, **kw), semantic=torch.compile(parts.semantic, **kw),
                  model=torch.compile(model, **kw), decode=torch.compile(parts.autoencoder.decode, **kw))


@torch.inference_mode()
def run_once(st: Stages, lr: torch.Tensor, noise: torch.Tensor, size: int, dtype, mark=lambda: None) -> torch.Tensor:
    lr_up = F.interpolate(lr, size=(size, size), mode="bicubic").clamp(0, 1).to(dtype)
    mark()
    z_lq = st.encode(lr_up)
    mark()
    sem = st.semantic(lr_up)
    mark()
    z0 = sample_one_step(st.model, z_lq, sem, noise.to(z_lq.dtype))
    mark()
    out = st.decode(z0)
    mark()
    return out


def time_batch(st: Stages, batch: int, size: int, args, device, dtype) -> tuple[dict[str, float], torch.Tensor]:
    """Mean seconds per call of each stage for one batch of ``batch`` images, and the last output."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(batch)
    lr = torch.rand(batch, 3, size // 4, size // 4, generator=gen).to(device)
    noise = None
    totals = dict.fromkeys(STAGES, 0.0)
    for i in range(args.warmup + args.repeats):
        marks = [time.perf_counter()]

        def mark(marks: list[float] = marks) -> None:
            sync()
            marks.append(time.perf_counter())

        if noise is None:
            with torch.inference_mode():
                shape = st.encode(F.interpolate(lr, size=(size, size), mode="bicubic").to(dtype)).shape
            noise = torch.randn(shape, generator=gen).to(device)
            marks[0] = time.perf_counter()
        out = run_once(st, lr, noise, size, dtype, mark)
        if i >= args.warmup:
            for stage, (a, b) in zip(STAGES, zip(marks, marks[1:])):
                totals[stage] += b - a
    return {k: v / args.repeats for k, v in totals.items()}, out.float()


def cuda_graph_stage(st: Stages, size: int, dtype, device, repeats: int) -> float:
    """Seconds per batch-1 image replaying the whole pipeline captured in one CUDA graph."""
    gen = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, size // 4, size // 4, generator=gen).to(device)
    with torch.inference_mode():
        shape = st.encode(F.interpolate(lr, size=(size, size), mode="bicubic").to(dtype)).shape
    noise = torch.randn(shape, generator=gen).to(device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run_once(st, lr, noise, size, dtype)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_once(st, lr, noise, size, dtype)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def row(label: str, batch: int, t: dict[str, float], extra: str = "") -> str:
    total = sum(t.values())
    return (f"{label:>9} {batch:>5} " + " ".join(f"{1000 * t[s]:>9.1f}ms" for s in STAGES)
            + f" {1000 * total:>7.1f}ms {1000 * total / batch:>9.1f} {batch / total:>9.2f}{extra}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg, parts, model = build(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    grid = args.size // parts.autoencoder.downsample
    clock = "wall-clock" if device.type == "cuda" else "CPU wall-clock on a shared machine"
    print(f"# one-step x4 inference: preset {args.preset}, {args.size}^2 output ({grid}x{grid} latent, "
          f"{parts.semantic.num_tokens} DINOv2 tokens), {args.dtype}, compile={args.compile} ({args.backend}), "
          f"on {name}; {clock}; RANDOM weights (timing only)")
    print(f"{'':>9} {'batch':>5} " + " ".join(f"{s:>11}" for s in STAGES)
          + f" {'total':>9} {'ms/image':>9} {'images/s':>9}")
    eager = Stages(encode=parts.autoencoder.encode, semantic=parts.semantic, model=model,
                   decode=parts.autoencoder.decode)
    fast = compiled(parts, model, args.backend) if args.compile else None
    for batch in args.batch:
        t_eager, out_eager = time_batch(eager, batch, args.size, args, device, dtype)
        print(row("eager", batch, t_eager), flush=True)
        if fast is None:
            continue
        t0 = time.perf_counter()
        time_batch(fast, batch, args.size, argparse.Namespace(warmup=0, repeats=1), device, dtype)
        compile_s = time.perf_counter() - t0
        t_fast, out_fast = time_batch(fast, batch, args.size, args, device, dtype)
        diff = float((out_fast - out_eager).abs().max())
        ratio = sum(t_eager.values()) / sum(t_fast.values())
        print(row("compiled", batch, t_fast, f"   {ratio:.2f}x eager, max |diff| {diff:.2e}, "
                  f"first call (compile) {compile_s:.1f}s"), flush=True)
        if device.type == "cuda" and batch == 1:
            per = cuda_graph_stage(fast, args.size, dtype, device, args.repeats)
            print(f"{'cuda-graph':>9} {1:>5} {'(whole pipeline, one replay)':>59} {1000 * per:>7.1f}ms "
                  f"{1000 * per:>9.1f} {1 / per:>9.2f}   {sum(t_eager.values()) / per:.2f}x eager", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
