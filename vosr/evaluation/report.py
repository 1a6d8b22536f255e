"""Evaluation outputs: per-image CSV, summary JSON and a side-by-side comparison sheet.

The sheet has one row per image: LR (nearest-upsampled to the output size) | output | GT at a
common panel height, then the same zoomed crop of each (nearest-neighbour, so pixels stay
visible), taken where the reference has the most local detail; a red box marks the crop.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)


@dataclass
class SheetRow:
    """One image of the comparison sheet (uint8 (H, W, 3) arrays)."""

    name: str
    pred: np.ndarray
    lr: np.ndarray | None = None
    gt: np.ndarray | None = None


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write ``rows`` with ``columns`` (missing values left empty); floats get 6 decimals."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float | int]]:
    """Mean, std and count of each metric over the rows that have a finite value for it."""
    out: dict[str, dict[str, float | int]] = {}
    for name in metrics:
        values = [r[name] for r in rows if isinstance(r.get(name), float) and math.isfinite(r[name])]
        if values:
            arr = np.asarray(values, dtype=np.float64)
            out[name] = {"mean": float(arr.mean()), "std": float(arr.std()), "count": len(values)}
    return out


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
    return path


def detail_box(img: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the ``size`` square with the highest mean local variance (gray)."""
    h, w = img.shape[:2]
    size = min(size, h, w)
    gray = torch.from_numpy(img.astype(np.float32).mean(axis=2))[None, None]
    mean = F.avg_pool2d(gray, 3, 1, 1)
    var = F.avg_pool2d((gray - mean) ** 2, size, stride=max(1, size // 4))  # (1, 1, h', w')
    idx = int(var.flatten().argmax())
    stride = max(1, size // 4)
    y0, x0 = (idx // var.shape[-1]) * stride, (idx % var.shape[-1]) * stride
    return y0, y0 + size, x0, x0 + size


def _fit(img: Image.Image, height: int) -> Image.Image:
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def _panels(row: SheetRow, panel: int, zoom: int) -> tuple[list[Image.Image], list[str]]:
    h, w = row.pred.shape[:2]
    views = [("LR", row.lr), ("output", row.pred), ("GT", row.gt)]
    views = [(label, arr) for label, arr in views if arr is not None]
    full = {label: Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST) for label, arr in views}
    ref = row.gt if row.gt is not None and row.gt.shape[:2] == (h, w) else row.pred
    y0, y1, x0, x1 = detail_box(ref, zoom)
    images, labels = [], []
    for label, img in full.items():
        boxed = img.copy()
        ImageDraw.Draw(boxed).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0), width=max(1, w // 256))
        images.append(_fit(boxed, panel))
        labels.append(f"{label} {row.name}" if label == "output" else label)
    for label, img in full.items():
        images.append(img.crop((x0, y0, x1, y1)).resize((panel, panel), Image.Resampling.NEAREST))
        labels.append(f"{label} zoom")
    return images, labels


def comparison_sheet(rows: list[SheetRow], path: str | Path, panel: int = 256, zoom: int = 64,
                     gap: int = 4, header: int = 14) -> Path:
    """Write the LR | output | GT sheet (+ zoomed crops) of ``rows`` to ``path`` (PNG)."""
    if not rows:
        raise ValueError("comparison sheet needs at least one image")
    lines = [_panels(row, panel, zoom) for row in rows]
    width = max(sum(im.width for im in images) + gap * (len(images) + 1) for images, _ in lines)
    height = len(lines) * (panel + header + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for images, labels in lines:
        x = gap
        for im, label in zip(images, labels):
            draw.text((x, y), label[: max(4, im.width // 6)], fill=(0, 0, 0))
            sheet.paste(im, (x, y + header))
            x += im.width + gap
        y += panel + header + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    logger.info("comparison sheet with %d rows: %s", len(rows), path)
    return path
