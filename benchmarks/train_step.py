"""Throughput of the teacher's training step: samples/s, MFU and peak memory.

The step is the real one (``vosr.train``'s objective on a DeepSpeed engine, one process):
degrade HR crops on the device, encode HR and LR with the frozen autoencoder, DINOv2 tokens
of the LR, flow loss with partial conditioning, backward, optimizer step, EMA update.
``--encoders without`` feeds ready-made latents and tokens instead, timing the transformer
step alone. All weights are random (timing only; said so in the output).

    python benchmarks/train_step.py                          # GPU: 0.5B, micro 8/16/32, with and without encoders
    python benchmarks/train_step.py --micro 32 --compile     # torch.compile'd blocks
    python benchmarks/train_step.py --preset tiny --crop 64  # what runs on a CPU (the default there)

MFU counts the transformer's matmul FLOPs only (3 forward-equivalents per image: forward +
backward), against the device's dense bf16 peak; encoder and degradation time is overhead.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from pathlib import Path

import torch
from random_parts import UNUSED_VAE_PATH, random_frozen_parts

from vosr.config import load_run_config
from vosr.runtime import distributed
from vosr.runtime.engine import TrainEngine
from vosr.runtime.perf import peak_flops
from vosr.training.teacher import build_teacher

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "0.5B"), default="0.5B" if gpu else "tiny",
                   help="model preset (default: 0.5B on GPU, tiny on CPU)")
    p.add_argument("--micro", type=int, nargs="+", default=[8, 16, 32] if gpu else [2, 4], help="micro-batch sizes")
    p.add_argument("--crop", type=int, default=512 if gpu else 64, help="HR crop side (512 -> 64x64 SD latents)")
    p.add_argument("--encoders", choices=("with", "without", "both"), default="both")
    p.add_argument("--steps", type=int, default=10 if gpu else 3, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=3 if gpu else 1, help="untimed steps first (compile, allocator)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--precision", choices=("bf16", "bf16_autocast", "fp32"), default="bf16" if gpu else "fp32")
    return p.parse_args(argv)


def build(args: argparse.Namespace, micro: int, device: torch.device, world: distributed.WorldInfo):
    """Config, frozen parts (random weights) and engine for one setting."""
    tiny = args.preset == "tiny"
    base = REPO / ("configs/tiny.yaml" if tiny else "configs/teacher/vosr_0.5b.yaml")
    overrides = [f"model.preset={args.preset}", f"data.crop_size={args.crop}", f"data.batch_size={micro}",
                 f"engine.zero_stage={args.zero_stage}", f"engine.precision={args.precision}",
                 "engine.global_batch_size=null", f"model.compile={str(args.compile).lower()}",
                 f"model.grad_checkpointing={str(args.grad_ckpt).lower()}", "semantic.random_init=true",
                 "semantic.path=null"]
    if not tiny:
        overrides += [UNUSED_VAE_PATH]
    cfg = load_run_config(str(base), overrides)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    parts = random_frozen_parts(cfg, device, dtype)
    model, objective = build_teacher(cfg, parts, device)
    engine = TrainEngine(model, cfg.engine, cfg.optim, micro_batch=micro, world=world, device=device)
    return cfg, parts, engine, objective


def run_setting(args: argparse.Namespace, micro: int, with_encoders: bool, device: torch.device,
                world: distributed.WorldInfo) -> dict:
    cfg, parts, engine, objective = build(args, micro, device, world)
    gen = torch.Generator(device=device).manual_seed(0)
    grid = cfg.data.crop_size // parts.autoencoder.downsample
    c = parts.autoencoder.latent_channels
    hr = torch.rand(micro, 3, cfg.data.crop_size, cfg.data.crop_size, device=device, generator=gen)
    fixed = (torch.randn(micro, c, grid, grid, device=device, generator=gen),
             torch.randn(micro, c, grid, grid, device=device, generator=gen),
             torch.randn(micro, parts.semantic.num_tokens, parts.semantic.dim, device=device, generator=gen))

    def step() -> None:
        if with_encoders:
            z_hq, z_lq, sem, _ = parts.encode_pair(hr, gen, autocast=engine.autocast)
        else:
            z_hq, z_lq, sem = fixed
        with engine.autocast():
            loss, _ = objective.loss(engine.forward_model(), z_hq, z_lq, sem, gen)
        engine.backward_step(loss)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    samples_s = micro * args.steps / seconds
    peak = peak_flops(device)
    mfu = 100.0 * samples_s * objective.flops_per_image / peak if peak else None
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) / 1024**3
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # process high-water mark, GiB
    return {"micro": micro, "encoders": "with" if with_encoders else "without", "samples/s": samples_s,
            "ms/step": 1000 * seconds / args.steps, "mfu(%)": mfu, "peak_mem(GiB)": mem,
            "tokens": grid * grid // cfg.model.patch_size**2, "sem_tokens": parts.semantic.num_tokens}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    info = distributed.world_info_from_env()
    device = distributed.select_device(info)
    distributed.init_distributed(info, "auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"# train step: preset {args.preset}, {args.crop}^2 crops, {args.precision}, ZeRO-{args.zero_stage}, "
          f"compile={args.compile}, grad_ckpt={args.grad_ckpt}, on {name}; RANDOM weights (timing only)")
    print(f"{'micro':>5} {'encoders':>8} {'samples/s':>10} {'ms/step':>9} {'MFU %':>6} {'peak GiB':>9} "
          f"{'tokens':>7} {'sem':>5}")
    modes = {"with": [True], "without": [False], "both": [False, True]}[args.encoders]
    try:
        for micro in args.micro:
            for with_encoders in modes:
                try:
                    r = run_setting(args, micro, with_encoders, device, info)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                except torch.OutOfMemoryError:
                    print(f"{micro:>5} {'with' if with_encoders else 'without':>8}  out of memory")
                    torch.cuda.empty_cache()
                    continue
                mfu = f"{r['mfu(%)']:.1f}" if r["mfu(%)"] is not None else "-"
                print(f"{r['micro']:>5} {r['encoders']:>8} {r['samples/s']:>10.2f} {r['ms/step']:>9.1f} {mfu:>6} "
                      f"{r['peak_mem(GiB)']:>9.2f} {r['tokens']:>7} {r['sem_tokens']:>5}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
