"""Scoring a folder of outputs for ``vosr.evaluate score``: per-image metrics, summary, table and sheet.

Outputs pair with ground truth (and LR inputs, for the sheet's LR and bicubic columns) by file
stem; ``args`` is the parsed ``score`` command line. Every requested metric that yields no value
is listed under ``dropped`` in ``summary.json`` with the reason, and said in one log line.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from vosr.evaluation.catalog import LOWER_IS_BETTER, PAIRED
from vosr.evaluation.metrics import MetricSuite
from vosr.evaluation.report import SheetRow, bicubic_upscale, comparison_sheet, summarize, write_csv, write_json
from vosr.evaluation.tables import markdown_table, means, run_table, write_text
from vosr.images import ImageError, list_images, read_image, to_tensor
from vosr.runtime.distributed import resolve_device

logger = logging.getLogger(__name__)


def _by_stem(folder: str | None, flag: str) -> dict[str, Path]:
    return {} if folder is None else {p.stem: p for p in list_images(folder, flag)}


def _read_optional(path: Path | None, name: str, label: str) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return read_image(path).rgb
    except ImageError as e:
        logger.warning("%s: %s %s unusable (%s); paired metrics skipped", name, label, path, e)
        return None


def score_one(suite: MetricSuite, pred_path: Path, gt_path: Path | None) -> dict[str, float | str]:
    """Metrics of one output (paired ones only when its GT exists and matches in size)."""
    pred = to_tensor(read_image(pred_path).rgb)
    gt_img = _read_optional(gt_path, pred_path.stem, "GT")
    gt = None if gt_img is None else to_tensor(gt_img)
    if gt is not None and gt.shape != pred.shape:
        logger.warning("%s: output %s vs GT %s differ in size; paired metrics skipped", pred_path.stem,
                       tuple(pred.shape[-2:]), tuple(gt.shape[-2:]))
        gt = None
    values = suite.compute(pred, gt)
    return {"name": pred_path.stem, **{k: v[0] for k, v in values.items()}}


def _sheet_row(suite: MetricSuite, name: str, pred_path: Path, gt_path: Path | None, lr_path: Path | None,
               row: dict) -> SheetRow:
    """The sheet's row: the output's values, plus a bicubic upscale of the LR scored the same way."""
    pred = read_image(pred_path).rgb
    gt, lr = _read_optional(gt_path, name, "GT"), _read_optional(lr_path, name, "LR")
    values = {"output": {k: v for k, v in row.items() if k != "name"}}
    bicubic = None if lr is None else bicubic_upscale(lr, pred.shape[:2])
    if bicubic is not None:
        gt_t = None if gt is None or gt.shape != pred.shape else to_tensor(gt)
        values["bicubic"] = {k: v[0] for k, v in suite.compute(to_tensor(bicubic), gt_t).items()}
    return SheetRow(name=name, pred=pred, lr=lr, gt=gt, bicubic=bicubic, values=values)


NO_GT = "no --gt given: paired metrics need the ground-truth images"


def dropped_metrics(requested: list[str], suite: MetricSuite, computed: list[str]) -> dict[str, str]:
    """Requested metrics without any value -> why (no --gt, missing weights, no image it could score)."""
    dropped = {name: NO_GT for name in requested if name not in suite.names}
    dropped.update(suite.unavailable)
    for name in suite.available:
        if name not in computed:
            dropped[name] = suite.problems.get(name, "no output had a ground-truth image of the same size")
    return dropped


def _say_dropped(dropped: dict[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, reason in dropped.items():
        by_reason.setdefault(reason, []).append(name)
    if by_reason:
        logger.warning("dropped: %s", " | ".join(f"{', '.join(n)}: {r}" for r, n in by_reason.items()))


def score(args: argparse.Namespace) -> int:
    """``vosr.evaluate score`` on the parsed command line; returns the exit status."""
    preds, gts, lrs = _by_stem(args.pred, "--pred"), _by_stem(args.gt, "--gt"), _by_stem(args.lr, "--lr")
    if not preds:
        raise FileNotFoundError(f"no images in --pred {args.pred}")
    requested = list(dict.fromkeys(args.metrics))
    wanted = requested if args.gt is not None else [m for m in requested if m not in PAIRED]
    suite = MetricSuite(wanted, device=torch.device(resolve_device(args.device)), crop_border=args.scale,
                        log_unavailable=False)
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
    computed = [m for m in suite.available if any(m in r and not np.isnan(r[m]) for r in rows)]
    dropped = dropped_metrics(requested, suite, computed)
    _say_dropped(dropped)
    write_csv(out / "per_image.csv", rows, ["name", *computed])
    summary = {"pred": str(args.pred), "gt": args.gt, "scale": args.scale, "images": len(rows),
               "metrics": summarize(rows, computed), "lower_is_better": sorted(LOWER_IS_BETTER & set(computed)),
               "dropped": dropped, "unavailable": suite.unavailable}
    write_json(out / "summary.json", summary)
    write_text(out / "table.md", run_table(summary, Path(args.pred).name))
    if args.sheet_rows > 0:
        picked = rows[:args.sheet_rows]
        sheet = [_sheet_row(suite, r["name"], preds[r["name"]], gts.get(r["name"]), lrs.get(r["name"]), r)
                 for r in picked]
        comparison_sheet(sheet, out / "comparison.png", scale=args.scale,
                         title=f"{Path(args.pred).name}: LR, bicubic, output and GT of {len(picked)} images "
                               f"(×{args.scale}; metrics against the GT under each panel)")
    logger.info("%s:\n%s", out / "table.md", markdown_table([Path(args.pred).name], [means(summary)], mark_best=False))
    return 0
