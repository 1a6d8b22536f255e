"""Do our degraded pairs look like the reference's? Medians of LQ statistics next to the reference's figures.

Runs the training degradation (configs/degradation/realesrgan.yaml, ``train=True`` as the trainer
does) on random 256² crops of the held-out scikit-image + sporco photos at a fixed seed, and prints
per-measure medians beside the figures measured with the reference's own degradation code on its
HR crops (given in issue 8; 2,400 samples there). Different photos, so expect agreement to within
a few percent, not equality; a clearly different median (e.g. PSNR off by a dB) means the pipelines
differ.

    python benchmarks/degradation_stats.py                  # 480 samples, about a minute on 2 CPU cores
    python benchmarks/degradation_stats.py --samples 2400   # as many as the reference's measurement

Measures (ours, on 8-bit images; Y/Cb/Cr are BT.601 on the 0-255 scale):
- ``psnr_y``, ``ssim_y``: LQ↑ (the LR resized back to the HR grid) against the HR crop;
- ``color_shift``: |mean Cb - mean Cb_HR| + |mean Cr - mean Cr_HR| of LQ↑, in levels;
- ``chroma_std_ratio``: (std Cb + std Cr) of LQ↑ over that of the HR crop;
- ``blockiness``: mean |horizontal + vertical gradient| of the LR across 8-pixel block boundaries
  over the same inside blocks (1 = no block structure; JPEG raises it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_tools.photos import heldout_photos
from vosr.config import DegradationConfig, load
from vosr.data.degrade import RealESRGANDegradation
from vosr.evaluation.metrics import psnr_y, rgb_to_y, ssim_y

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {"psnr_y": 23.4, "ssim_y": 0.60, "color_shift": 0.41, "chroma_std_ratio": 0.91, "blockiness": 1.11}
"""Medians from the reference's degradation code (issue 8; the reference's definitions may differ in detail)."""


def chroma(img01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 2, H, W) BT.601 Cb, Cr on the 0-255 scale."""
    w = torch.tensor([[-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=torch.float64)
    return torch.einsum("ck,bkhw->bchw", w, img01.double()) + 128.0


def blockiness(lr: torch.Tensor) -> torch.Tensor:
    """(B,) gradient magnitude of the LR's luma across 8-pixel block edges over inside blocks."""
    y = rgb_to_y(lr)[:, 0]  # (B, h, w)
    gx = (y[:, :, 1:] - y[:, :, :-1]).abs()  # between columns j and j+1
    gy = (y[:, 1:, :] - y[:, :-1, :]).abs()
    edge_x = (torch.arange(gx.shape[-1]) % 8) == 7
    edge_y = (torch.arange(gy.shape[-2]) % 8) == 7
    at_edges = gx[:, :, edge_x].mean((1, 2)) + gy[:, edge_y, :].mean((1, 2))
    inside = gx[:, :, ~edge_x].mean((1, 2)) + gy[:, ~edge_y, :].mean((1, 2))
    return at_edges / inside.clamp(min=1e-6)


def measures(hr: torch.Tensor, lr: torch.Tensor, lr_up: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample statistics of one degraded batch (see the module docstring)."""
    c_up, c_hr = chroma(lr_up), chroma(hr)
    return {
        "psnr_y": psnr_y(lr_up, hr),
        "ssim_y": ssim_y(lr_up, hr),
        "color_shift": (c_up.mean((2, 3)) - c_hr.mean((2, 3))).abs().sum(1),
        "chroma_std_ratio": c_up.std((2, 3)).sum(1) / c_hr.std((2, 3)).sum(1).clamp(min=1e-6),
        "blockiness": blockiness(lr),
    }


def random_crops(photos: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random ``size``² crops, drawn across the photos; (n, 3, size, size) in [0, 1]."""
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y = int(rng.integers(0, img.shape[0] - size + 1))
        x = int(rng.integers(0, img.shape[1] - size + 1))
        crops.append(torch.from_numpy(np.ascontiguousarray(img[y:y + size, x:x + size])).permute(2, 0, 1))
    return torch.stack(crops).float() / 255


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=480)
    p.add_argument("--crop", type=int, default=256, help="HR crop side (pixels)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--degradation", default=str(REPO / "configs" / "degradation" / "realesrgan.yaml"))
    args = p.parse_args(argv)
    photos = [img for _, img in heldout_photos() if min(img.shape[:2]) >= args.crop]
    deg = RealESRGANDegradation(load(DegradationConfig, args.degradation))
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    values: dict[str, list[torch.Tensor]] = {k: [] for k in REFERENCE}
    cpu0 = time.process_time()
    for start in range(0, args.samples, args.batch):
        hr = random_crops(photos, min(args.batch, args.samples - start), args.crop, rng)
        pair = deg(hr, gen, train=True)
        for key, v in measures(hr, pair.lr, pair.lr_up).items():
            values[key].append(v.float())
    cpu = time.process_time() - cpu0
    print(f"# {args.samples} samples of {args.crop}² crops from {len(photos)} held-out photos, seed {args.seed}; "
          f"{cpu:.0f} CPU-s")
    print(f"{'measure':>18} {'ours (median)':>14} {'reference':>10} {'ratio':>7}")
    for key, ref in REFERENCE.items():
        ours = torch.cat(values[key]).median().item()
        print(f"{key:>18} {ours:>14.3f} {ref:>10.3f} {ours / ref:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
