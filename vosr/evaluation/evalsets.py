"""Build paired evaluation sets from HR images: centre-cropped HR plus its LR at a fixed seed.

Protocols: ``bicubic`` (antialiased bicubic downscale) and ``realesrgan`` (the second-order
degradation of a YAML config, evaluated with ``train=False``). Image ``i`` (in sorted file order)
is degraded with its own CPU generator seeded from ``(seed, i)``: a re-run reproduces every pair,
and an image's LR does not depend on how many random draws the images before it used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vosr.config import DegradationConfig, load, to_dict
from vosr.data.degrade import RealESRGANDegradation, downsample_bicubic
from vosr.data.stream import derive_seed
from vosr.evaluation.catalog import PROTOCOLS
from vosr.evaluation.report import write_json
from vosr.images import ImageError, list_images, read_image, save_image, to_tensor, to_uint8

logger = logging.getLogger(__name__)

DEFAULT_DEGRADATION = "configs/degradation/realesrgan.yaml"


@dataclass(frozen=True, kw_only=True)
class MakeSetOptions:
    """Settings of ``make_set``."""

    seed: int = 0
    """Base seed; image i uses a generator seeded from (seed, i)."""
    protocol: str = "realesrgan"
    """realesrgan or bicubic."""
    crop: int = 512
    """Side of the centre square crop of each HR image (pixels); smaller images use their short side."""
    scale: int | None = None
    """Downscaling factor; None = the degradation config's scale (4 for bicubic without a config)."""
    degradation: str | None = None
    """Degradation YAML (realesrgan protocol); None = configs/degradation/realesrgan.yaml."""


def image_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for image ``index`` under base ``seed`` (the training stream's mixing)."""
    return derive_seed(seed, index)


def center_crop(rgb: np.ndarray, crop: int, multiple: int) -> np.ndarray:
    """Centre square of side min(crop, H, W) rounded down to ``multiple``; (H, W, 3) -> (S, S, 3)."""
    h, w = rgb.shape[:2]
    side = min(crop, h, w) // multiple * multiple
    if side < multiple:
        raise ImageError(f"{w}x{h} is smaller than the scale {multiple}")
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side])


def _degrader(opts: MakeSetOptions) -> tuple[RealESRGANDegradation | None, int, dict | None]:
    """The degradation (None for bicubic), the scale and the config dict for the manifest."""
    if opts.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {opts.protocol!r}; use one of {PROTOCOLS} (--protocol)")
    if opts.protocol == "bicubic":
        return None, opts.scale or 4, None
    cfg = load(DegradationConfig, opts.degradation or DEFAULT_DEGRADATION)
    if opts.scale is not None and opts.scale != cfg.scale:
        raise ValueError(f"--scale {opts.scale} differs from the degradation's scale {cfg.scale}; "
                         "change --degradation (degradation scale) or drop --scale")
    return RealESRGANDegradation(cfg), cfg.scale, to_dict(cfg)


def make_set(hr_dir: str | Path, out_dir: str | Path, opts: MakeSetOptions) -> dict:
    """Write ``out_dir/HR/<stem>.png`` and ``out_dir/LR/<stem>.png`` for every usable HR image.

    Returns the manifest (also written to ``out_dir/manifest.json``).
    """
    from tqdm.auto import tqdm

    degrader, scale, degradation_cfg = _degrader(opts)
    out_dir = Path(out_dir)
    files = list_images(hr_dir, "--hr")
    entries, skipped = [], []
    for index, path in enumerate(tqdm(files, desc=f"make-set ({opts.protocol})", unit="img", disable=len(files) < 2)):
        try:
            hr = center_crop(read_image(path).rgb, opts.crop, scale)
        except ImageError as e:
            logger.warning("skip %s: %s", path, e)
            skipped.append({"file": path.name, "reason": str(e)})
            continue
        hr01 = to_tensor(hr)  # (1, 3, S, S)
        if degrader is None:
            lr01 = downsample_bicubic(hr01, scale)
        else:
            generator = torch.Generator().manual_seed(image_seed(opts.seed, index))
            lr01 = degrader(hr01, generator, train=False).lr
        save_image(out_dir / "HR" / f"{path.stem}.png", hr)
        save_image(out_dir / "LR" / f"{path.stem}.png", to_uint8(lr01))
        entries.append({"name": path.stem, "source": path.name, "index": index, "hr_size": hr.shape[0],
                        "lr_size": int(lr01.shape[-1])})
    manifest = {"protocol": opts.protocol, "seed": opts.seed, "scale": scale, "crop": opts.crop,
                "images": entries, "skipped": skipped, "degradation": degradation_cfg}
    write_json(out_dir / "manifest.json", manifest)
    logger.info("make-set: %d pairs written to %s (%d skipped)", len(entries), out_dir, len(skipped))
    return manifest
