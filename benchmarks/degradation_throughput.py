"""Throughput of the batched Real-ESRGAN degradation, in degraded pairs per second.

    python benchmarks/degradation_throughput.py                       # CPU, batch 8, 512 x 512
    python benchmarks/degradation_throughput.py --device cuda         # CUDA, batch 32
    python benchmarks/degradation_throughput.py --size 128 --iters 2  # a tiny CPU run

Input is tiled crops of real photos (scikit-image), so JPEG, Poisson noise and resizes see
natural statistics. Prints per-iteration times and the mean over the timed iterations.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vosr.config import core
from vosr.config.degradation import DegradationConfig
from vosr.data.degrade import RealESRGANDegradation


def photo_batch(batch: int, size: int) -> torch.Tensor:
    """(batch, 3, size, size) float crops of real photos in [0, 1] (tiled when a photo is smaller)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(batch):
        photo = photos[i % len(photos)][..., :3]
        reps = (-(-size // photo.shape[0]) + 1, -(-size // photo.shape[1]) + 1, 1)
        tiled = np.tile(photo, reps)
        y, x = int(rng.integers(0, tiled.shape[0] - size + 1)), int(rng.integers(0, tiled.shape[1] - size + 1))
        crops.append(torch.from_numpy(np.ascontiguousarray(tiled[y:y + size, x:x + size])))
    return torch.stack(crops).permute(0, 3, 1, 2).float() / 255.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time ``iters`` batches after ``warmup`` ones, print pairs/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/degradation/realesrgan.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    parser.add_argument("--size", type=int, default=512, help="HR crop size (a multiple of the scale)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    deg = RealESRGANDegradation(core.load(DegradationConfig, args.config))
    hr = photo_batch(batch, args.size).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    times = []
    for it in range(args.warmup + args.iters):
        _sync(device)
        start = time.perf_counter()
        deg(hr, generator)
        _sync(device)
        elapsed = time.perf_counter() - start
        if it >= args.warmup:
            times.append(elapsed)
            print(f"iter {it - args.warmup}: {elapsed * 1e3:.1f} ms, {batch / elapsed:.1f} pairs/s")
    mean = sum(times) / len(times)
    threads = torch.get_num_threads()
    print(f"{args.config} on {device} (torch threads {threads}): batch {batch} at {args.size}x{args.size}: "
          f"{mean * 1e3:.1f} ms/batch, {batch / mean:.1f} pairs/s (mean of {len(times)} after {args.warmup} warm-up)")


if __name__ == "__main__":
    main()
