"""Scoring a folder of outputs for ``vosr.evaluate score``: per-image metrics, the summary and the sheet.

Outputs pair with ground truth (and LR inputs, for the sheet) by file stem; ``args`` is the
parsed ``score`` command line.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from vosr.evaluation.metrics import LOWER_IS_BETTER, MetricSuite
from vosr.evaluation.report import SheetRow, comparison_sheet, summarize, write_csv, write_json
from vosr.images import ImageError, list_images, read_image, to_tensor
from vosr.runtime.distributed import resolve_device

logger = logging.getLogger(__name__)


def _by_stem(folder: str | None, flag: str) -> dict[str, Path]:
    return {} if folder is None else {p.stem: p for p in list_images(folder, flag)}


def _load_optional(path: Path | None, name: str, label: str) -> torch.Tensor | None:
    if path is None:
        return None
    try:
        return to_tensor(read_image(path).rgb)
    except ImageError as e:
        logger.warning("%s: %s %s unusable (%s); paired metrics skipped", name, label, path, e)
        return None


def score_one(suite: MetricSuite, pred_path: Path, gt_path: Path | None) -> dict[str, float | str]:
    """Metrics of one output (paired ones only when its GT exists and matches in size)."""
    pred = to_tensor(read_image(pred_path).rgb)
    gt = _load_optional(gt_path, pred_path.stem, "GT")
    if gt is not None and gt.shape != pred.shape:
        logger.warning("%s: output %s vs GT %s differ in size; paired metrics skipped", pred_path.stem,
                       tuple(pred.shape[-2:]), tuple(gt.shape[-2:]))
        gt = None
    values = suite.compute(pred, gt)
    return {"name": pred_path.stem, **{k: v[0] for k, v in values.items()}}


def _sheet(names: list[str], preds: dict[str, Path], gts: dict[str, Path], lrs: dict[str, Path],
           path: Path) -> None:
    def read(p: Path | None):
        try:
            return None if p is None else read_image(p).rgb
        except ImageError:
            return None

    rows = [SheetRow(name=n, pred=read_image(preds[n]).rgb, lr=read(lrs.get(n)), gt=read(gts.get(n))) for n in names]
    comparison_sheet(rows, path)


def score(args: argparse.Namespace) -> int:
    """``vosr.evaluate score`` on the parsed command line; returns the exit status."""
    preds, gts, lrs = _by_stem(args.pred, "--pred"), _by_stem(args.gt, "--gt"), _by_stem(args.lr, "--lr")
    if not preds:
        logger.error("no images in --pred %s", args.pred)
        return 1
    suite = MetricSuite(list(args.metrics), device=torch.device(resolve_device(args.device)),
                        crop_border=args.scale)
    from tqdm.auto import tqdm

    rows = []
    for name, path in tqdm(sorted(preds.items()), desc="score", unit="img", disable=len(preds) < 2):
        if args.gt is not None and name not in gts:
            logger.warning("%s: no GT with this stem in %s; paired metrics skipped", name, args.gt)
        try:
            rows.append(score_one(suite, path, gts.get(name)))
        except (ImageError, ValueError) as e:
            logger.warning("skip %s: %s", path, e)
    if not rows:
        logger.error("no output could be scored")
        return 1
    out = Path(args.out)
    computed = [m for m in suite.available if any(m in r for r in rows)]
    write_csv(out / "per_image.csv", rows, ["name", *computed])
    summary = {"pred": str(args.pred), "gt": args.gt, "scale": args.scale, "images": len(rows),
               "metrics": summarize(rows, computed), "lower_is_better": sorted(LOWER_IS_BETTER & set(computed)),
               "unavailable": suite.unavailable,
               "not_computed": [m for m in suite.available if m not in computed]}
    write_json(out / "summary.json", summary)
    if args.sheet_rows > 0:
        _sheet([r["name"] for r in rows[:args.sheet_rows]], preds, gts, lrs, out / "comparison.png")
    for name, stats in summary["metrics"].items():
        logger.info("%-8s %.4f (n=%d)", name, stats["mean"], stats["count"])
    return 0
