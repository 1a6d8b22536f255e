"""Evaluation CLI: ``python -m vosr.evaluate score ...`` and ``python -m vosr.evaluate make-set ...``.

``score`` measures a folder of outputs, paired against ground truth (``--gt``: PSNR/SSIM on Y
with a ``--scale``-pixel border crop, LPIPS, DISTS) and without reference (NIQE, MUSIQ, MANIQA,
CLIP-IQA when pyiqa and their weights are on disk). Files pair by stem. It writes
``per_image.csv``, ``summary.json`` (means, unavailable metrics with reasons) and
``comparison.png`` (LR | output | GT with zoomed crops). ``make-set`` builds HR/LR pairs
(see ``vosr.evalsets``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from vosr.evalsets import PROTOCOLS, MakeSetOptions, make_set
from vosr.images import ImageError, list_images, read_image, to_tensor
from vosr.metrics import ALL_METRICS, LOWER_IS_BETTER, MetricSuite
from vosr.report import SheetRow, comparison_sheet, summarize, write_csv, write_json
from vosr.runtime.distributed import resolve_device

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of both subcommands."""
    parser = argparse.ArgumentParser(prog="python -m vosr.evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="metrics of a folder of outputs (paired with --gt, or no-reference)")
    s.add_argument("--pred", required=True, help="folder of SR outputs")
    s.add_argument("--gt", default=None, help="folder of ground-truth HR images (same stems)")
    s.add_argument("--lr", default=None, help="folder of LR inputs (for the comparison sheet)")
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--scale", type=int, default=4, help="SR factor; PSNR/SSIM crop this many border pixels")
    s.add_argument("--metrics", nargs="+", default=list(ALL_METRICS), choices=ALL_METRICS, help="metrics to compute")
    s.add_argument("--sheet-rows", type=int, default=6, help="images on the comparison sheet (0 = no sheet)")
    s.add_argument("--device", default="auto", help="cpu, cuda, ... (auto = cuda when available)")
    m = sub.add_parser("make-set", help="HR/LR evaluation pairs from HR images at a fixed seed")
    m.add_argument("--hr", required=True, help="folder of HR images")
    m.add_argument("--out", required=True, help="output folder (gets HR/, LR/, manifest.json)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--protocol", choices=PROTOCOLS, default="realesrgan")
    m.add_argument("--crop", type=int, default=512, help="centre-crop side of the HR images (pixels)")
    m.add_argument("--scale", type=int, default=None, help="downscaling factor (default: the degradation's)")
    m.add_argument("--degradation", default=None, help="degradation YAML (default configs/degradation/realesrgan.yaml)")
    return parser


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
    """The ``score`` subcommand; returns the exit status."""
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


def main(argv: list[str] | None = None) -> int:
    """CLI entry with subcommands ``score`` and ``make-set``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "score":
            return score(args)
        opts = MakeSetOptions(seed=args.seed, protocol=args.protocol, crop=args.crop, scale=args.scale,
                              degradation=args.degradation)
        manifest = make_set(args.hr, args.out, opts)
        return 0 if manifest["images"] else 1
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
