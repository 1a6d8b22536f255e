"""Evaluation outputs: per-image CSV, summary JSON and a side-by-side comparison sheet.

The sheet has a title, one header with the column labels, then one titled row per image:
LR (nearest ×scale, to show its pixels) | bicubic ×scale of the LR (PIL) | output | GT, each
fitted into a square panel, then the same zoomed crop of each (nearest-neighbour, so pixels stay
visible), taken where the reference has the most local detail and marked by a red box. Under
the bicubic and output panels: their metric values against the GT, as papers print them.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from vosr.evaluation.catalog import METRICS

logger = logging.getLogger(__name__)


@dataclass
class SheetRow:
    """One image of the comparison sheet (uint8 (H, W, 3) arrays) and its metric values per panel."""

    name: str
    pred: np.ndarray
    lr: np.ndarray | None = None
    gt: np.ndarray | None = None
    bicubic: np.ndarray | None = None
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    """Panel ("output", "bicubic") -> metric -> value."""


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


def bicubic_upscale(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 LR -> (H, W, 3) uint8 at ``size`` = (H, W), PIL bicubic (the usual SR baseline)."""
    return np.asarray(Image.fromarray(lr).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (has × ↑ ↓; the system's, or the copy matplotlib ships), else PIL's default font."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = ["DejaVuSans.ttf"]
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    for name in candidates:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _letterbox(img: Image.Image, panel: int) -> Image.Image:
    """``img`` scaled to fit a ``panel`` square (aspect kept), centred on white."""
    scale = panel / max(img.width, img.height)
    fitted = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                        Image.Resampling.LANCZOS)
    box = Image.new("RGB", (panel, panel), (255, 255, 255))
    box.paste(fitted, ((panel - fitted.width) // 2, (panel - fitted.height) // 2))
    return box


def _captions(values: dict[str, float]) -> list[str]:
    """Metric values as papers print them, two per line: ``PSNR↑ 24.31   SSIM↑ 0.7012``."""
    cells = [f"{METRICS[k].header} {METRICS[k].format(v)}" for k, v in values.items() if k in METRICS]
    return ["   ".join(cells[i:i + 2]) for i in range(0, len(cells), 2)]


def _panels(row: SheetRow, scale: int, panel: int, zoom: int) -> list[tuple[str, Image.Image | None, list[str]]]:
    """(column label, panel image or None when the row lacks that view, caption lines): full views, then zooms."""
    h, w = row.pred.shape[:2]
    lr_label, bic_label = f"LR (nearest ×{scale})", f"bicubic ×{scale}"
    views = [(lr_label, row.lr), (bic_label, row.bicubic), ("output", row.pred), ("GT", row.gt)]
    captions = {bic_label: _captions(row.values.get("bicubic", {})), "output": _captions(row.values.get("output", {})),
                lr_label: [] if row.lr is None else [f"input {row.lr.shape[1]}×{row.lr.shape[0]}"]}
    ref = row.gt if row.gt is not None and row.gt.shape[:2] == (h, w) else row.pred
    y0, y1, x0, x1 = detail_box(ref, zoom)
    fulls, zooms = [], []
    for label, arr in views:
        zoom_label = f"{label.split(' (')[0]} zoom"
        if arr is None:
            fulls.append((label, None, []))
            zooms.append((zoom_label, None, []))
            continue
        img = Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST)
        zooms.append((zoom_label, img.crop((x0, y0, x1, y1)).resize((panel, panel), Image.Resampling.NEAREST), []))
        ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0), width=max(1, w // 256))
        fulls.append((label, _letterbox(img, panel), captions.get(label, [])))
    return fulls + zooms


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def comparison_sheet(rows: list[SheetRow], path: str | Path, title: str = "", scale: int = 4, panel: int = 256,
                     zoom: int = 64, gap: int = 8) -> Path:
    """Write the titled LR | bicubic | output | GT sheet (+ zoomed crops, metric captions) of ``rows`` (PNG)."""
    if not rows:
        raise ValueError("comparison sheet needs at least one image")
    lines = [_panels(row, scale, panel, zoom) for row in rows]
    used = [c for c in range(len(lines[0])) if any(line[c][1] is not None for line in lines)]  # drop empty columns
    lines = [[line[c] for c in used] for line in lines]
    columns = lines[0]
    big, small = _font(18), _font(13)
    line_h = 17
    caption_h = line_h * max(1, max(len(c) for line in lines for _, _, c in line))
    row_h = 22 + panel + 4 + caption_h + gap
    width = gap + len(columns) * (panel + gap)
    top = 34 + 22
    sheet = Image.new("RGB", (width, top + len(lines) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 8), _fit_text(draw, title, big, width - 2 * gap), fill=(0, 0, 0), font=big)
    for c, (label, _, _) in enumerate(columns):  # one header: the column labels
        x = gap + c * (panel + gap)
        draw.text((x + panel / 2, 36), _fit_text(draw, label, small, panel), fill=(0, 0, 0), font=small, anchor="mt")
    y = top
    for row, line in zip(rows, lines):
        draw.text((gap, y + 2), _fit_text(draw, row.name, small, width - 2 * gap), fill=(30, 30, 160), font=small)
        for c, (_, im, caption) in enumerate(line):
            x = gap + c * (panel + gap)
            if im is None:
                continue
            sheet.paste(im, (x, y + 22))
            for k, text in enumerate(caption):
                draw.text((x, y + 22 + panel + 4 + k * line_h), _fit_text(draw, text, small, panel), fill=(0, 0, 0),
                          font=small)
        y += row_h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    logger.info("comparison sheet with %d rows: %s", len(rows), path)
    return path


def sweep_sheet(panels: list[tuple[str, np.ndarray, list[str]]], path: str | Path, title: str = "",
                panel: int = 256, gap: int = 8, per_row: int = 6) -> Path:
    """One labelled sheet of ``(label, (H, W, 3) uint8 image, caption lines)`` panels, ``per_row`` a row (PNG)."""
    if not panels:
        raise ValueError("sweep sheet needs at least one panel")
    big, small = _font(18), _font(13)
    line_h = 17
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    caption_h = line_h * max(1, max(len(c) for _, _, c in panels))
    cell_h = 20 + panel + 4 + caption_h + gap
    width = gap + cols * (panel + gap)
    top = 34
    sheet = Image.new("RGB", (width, top + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 8), _fit_text(draw, title, big, width - 2 * gap), fill=(0, 0, 0), font=big)
    for i, (label, img, caption) in enumerate(panels):
        x, y = gap + (i % cols) * (panel + gap), top + (i // cols) * cell_h
        draw.text((x + panel / 2, y), _fit_text(draw, label, small, panel), fill=(30, 30, 160), font=small, anchor="mt")
        zoom = max(1, panel // max(img.shape[:2]))  # small outputs: enlarged pixel for pixel first
        shown = Image.fromarray(img).resize((img.shape[1] * zoom, img.shape[0] * zoom), Image.Resampling.NEAREST)
        sheet.paste(_letterbox(shown, panel), (x, y + 20))
        for k, text in enumerate(caption):
            draw.text((x, y + 20 + panel + 4 + k * line_h), _fit_text(draw, text, small, panel), fill=(0, 0, 0),
                      font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    logger.info("sweep sheet with %d panels: %s", len(panels), path)
    return path
