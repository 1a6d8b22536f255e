"""The guidance explorer: ``vosr.infer --guidance-sweep lo:hi:n`` on one image -> one labelled sheet.

What is swept follows the model: a guidance-conditioned student sweeps its omega (inside the range
stored in its weights); a teacher sweeps ``s`` on both branches, or only ``s_lr`` when
``--guidance-sem`` is fixed, or only ``s_sem`` when ``--guidance-lr`` is. Under each panel: PSNR (Y)
against the bicubic upsample of the LR (high = close to the input, low = more generated detail) and a
sharpness number (mean absolute Laplacian of the luma, 0-255 scale; bicubic itself is the first panel).
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vosr.evaluation.metrics import psnr_y, rgb_to_y
from vosr.inference.pipeline import SRPipeline, TileOptions

logger = logging.getLogger(__name__)

LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def parse_sweep(text: str) -> list[float]:
    """``lo:hi:n`` -> n evenly spaced values from lo to hi (n >= 2); ValueError naming the flag."""
    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"--guidance-sweep {text!r}: expected lo:hi:n, e.g. -0.5:1.5:5") from None
    if not 2 <= n <= 16 or not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        raise ValueError(f"--guidance-sweep {text!r}: need lo != hi and 2 <= n <= 16")
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def sharpness(img01: Tensor) -> float:
    """Mean absolute Laplacian of the luma (0-255 scale) of a (1, 3, H, W) image in [0, 1]."""
    y = rgb_to_y(img01.float()).float()  # (1, 1, H, W)
    kernel = torch.tensor(LAPLACIAN, dtype=y.dtype, device=y.device).view(1, 1, 3, 3)
    return float(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel).abs().mean())


@dataclass(frozen=True)
class SweepPoint:
    """One panel's sampler settings and label."""

    label: str
    kwargs: dict


def sweep_points(pipe: SRPipeline, values: list[float], args: argparse.Namespace) -> tuple[str, list[SweepPoint]]:
    """(what is swept, the points) for this model and the fixed flags; ValueError when nothing can be swept
    or a point is one the model refuses (checked before any work)."""
    lr_fixed, sem_fixed = args.guidance_lr, args.guidance_sem
    if pipe.model.cfg.with_r:
        if pipe.guidance_range is None:
            raise ValueError("--guidance-sweep: this student's guidance was fixed at distillation; only teachers and "
                             "students distilled with distill.guidance_range have a live guidance")
        name, points = "omega", [SweepPoint(f"ω={v:g}", {"guidance": v}) for v in values]
    elif lr_fixed is not None and sem_fixed is not None:
        raise ValueError("--guidance-sweep with both --guidance-lr and --guidance-sem fixed leaves nothing to sweep")
    elif sem_fixed is not None:
        name = f"s_lr (s_sem={sem_fixed:g})"
        points = [SweepPoint(f"s_lr={v:g}", {"guidance_lr": v, "guidance_sem": sem_fixed}) for v in values]
    elif lr_fixed is not None:
        name = f"s_sem (s_lr={lr_fixed:g})"
        points = [SweepPoint(f"s_sem={v:g}", {"guidance_lr": lr_fixed, "guidance_sem": v}) for v in values]
    else:
        name, points = "s", [SweepPoint(f"s={v:g}", {"guidance": v}) for v in values]
    for point in points:
        pipe.sample_options(args.steps, point.kwargs.get("guidance"), args.weak_anchor,
                            guidance_lr=point.kwargs.get("guidance_lr"), guidance_sem=point.kwargs.get("guidance_sem"))
    return name, points


def run_sweep(pipe: SRPipeline, src: Path, out_dir: Path, args: argparse.Namespace) -> Path:
    """Upscale ``src`` at every point of ``args.guidance_sweep``; write ``<stem>_sweep.png`` and return it."""
    from vosr.evaluation.report import sweep_sheet
    from vosr.images import read_image, to_tensor, to_uint8

    name, points = sweep_points(pipe, parse_sweep(args.guidance_sweep), args)
    image = read_image(src, max_pixels=args.max_pixels)
    lr01 = to_tensor(image.rgb)
    tiles = TileOptions(tile=args.tile, overlap=args.overlap, ae_tile=args.tile, ae_overlap=args.overlap,
                        batch=args.batch)
    bicubic = pipe.prepare(lr01, args.scale).float().cpu()
    panels = [(f"bicubic ×{args.scale or pipe.scale:g}", to_uint8(bicubic), [f"sharpness {sharpness(bicubic):.2f}"])]
    for point in points:
        out = pipe.upscale(lr01, steps=args.steps, weak_anchor=args.weak_anchor, seed=args.seed, tiles=tiles,
                           color_fix=args.color_fix, scale=args.scale, progress=point.label, **point.kwargs)
        psnr, sharp = float(psnr_y(out, bicubic)[0]), sharpness(out)
        logger.info("%s: PSNR vs bicubic %.2f dB, sharpness %.2f", point.label, psnr, sharp)
        panels.append((point.label, to_uint8(out), [f"PSNR vs bicubic {psnr:.2f} dB", f"sharpness {sharp:.2f}"]))
    path = out_dir / f"{src.stem}_sweep.png"
    title = f"{src.name}: sweep over {name}"
    return sweep_sheet(panels, path, title=title)
