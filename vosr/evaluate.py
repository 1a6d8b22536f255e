"""Evaluation CLI: ``python -m vosr.evaluate {score,make-set,compare} ...``.

``score`` measures a folder of outputs, paired against ground truth (``--gt``: PSNR/SSIM on Y
with a ``--scale``-pixel border crop, LPIPS, DISTS) and without reference (NIQE; MUSIQ, MANIQA,
CLIP-IQA when pyiqa and their weights are on disk). Files pair by stem. It writes
``per_image.csv``, ``summary.json`` (means, dropped metrics with reasons), ``table.md`` (the
metrics as papers print them) and ``comparison.png`` (LR | bicubic | output | GT with zoomed
crops and metric values). ``make-set`` builds HR/LR pairs (see ``vosr.evaluation.evalsets``).
``compare`` puts several ``score`` runs side by side: a table with the best per column marked,
and a bar chart.
"""
from __future__ import annotations

import argparse
import logging
import sys

from vosr.evaluation.catalog import ALL_METRICS, PROTOCOLS

logger = logging.getLogger(__name__)

SCORE_HELP = ("Score a folder of SR outputs: paired metrics against --gt (same file stems), no-reference ones "
              "on the outputs alone; writes per_image.csv, summary.json, table.md and comparison.png to --out.")
MAKE_SET_HELP = ("Build an evaluation set from HR images: centre crops (HR/) and their degraded LR (LR/) at a "
                 "fixed seed, plus manifest.json.")
COMPARE_HELP = ("Put several 'score' runs side by side: prints a Markdown table with the best value per column "
                "in bold and writes table.md and chart.png to --out.")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (and exit 2, as argparse's)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the three subcommands."""
    parser = _Parser(prog="python -m vosr.evaluate",
                     description="Score super-resolution outputs, build evaluation sets, compare scored runs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="{score,make-set,compare}",
                                help="run python -m vosr.evaluate COMMAND --help for its options")
    s = sub.add_parser("score", help="metrics of a folder of outputs (paired with --gt, or no-reference)",
                       description=SCORE_HELP)
    s.add_argument("--pred", required=True, help="folder of SR outputs")
    s.add_argument("--gt", default=None, help="folder of ground-truth HR images (same stems); without it the "
                   "paired metrics (psnr, ssim, lpips, dists) are dropped")
    s.add_argument("--lr", default=None, help="folder of LR inputs (the sheet's LR and bicubic columns)")
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--scale", type=int, default=4, help="SR factor; PSNR/SSIM crop this many border pixels")
    s.add_argument("--metrics", nargs="+", default=list(ALL_METRICS), choices=ALL_METRICS, metavar="METRIC",
                   help=f"metrics to compute, any of {' '.join(ALL_METRICS)} (default: all)")
    s.add_argument("--sheet-rows", type=int, default=6, help="images on the comparison sheet (0 = no sheet)")
    s.add_argument("--device", default="auto", help="cpu, cuda, ... (auto = cuda when available)")
    m = sub.add_parser("make-set", help="HR/LR evaluation pairs from HR images at a fixed seed",
                       description=MAKE_SET_HELP)
    m.add_argument("--hr", required=True, help="folder of HR images")
    m.add_argument("--out", required=True, help="output folder (gets HR/, LR/, manifest.json)")
    m.add_argument("--seed", type=int, default=0, help="base seed; image i is degraded with a seed from (seed, i)")
    m.add_argument("--protocol", choices=PROTOCOLS, default="realesrgan",
                   help="realesrgan: the degradation YAML (train=False); bicubic: antialiased bicubic downscale")
    m.add_argument("--crop", type=int, default=512, help="centre-crop side of the HR images (pixels)")
    m.add_argument("--scale", type=int, default=None, help="downscaling factor (default: the degradation's)")
    m.add_argument("--degradation", default=None, help="degradation YAML (default configs/degradation/realesrgan.yaml)")
    c = sub.add_parser("compare", help="several score runs side by side (table + bar chart)", description=COMPARE_HELP)
    c.add_argument("runs", nargs="+", metavar="RUN", help="--out folders of 'score' runs (or their summary.json)")
    c.add_argument("--out", default="compare", help="folder for table.md and chart.png (default: ./compare)")
    c.add_argument("--names", nargs="+", default=None, help="row labels, one per RUN (default: the folder names)")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "score":
        from vosr.evaluation.score import score

        return score(args)
    if args.command == "compare":
        from vosr.evaluation.compare import compare

        print(compare(args.runs, args.out, args.names))
        return 0
    from vosr.evaluation.evalsets import MakeSetOptions, make_set

    opts = MakeSetOptions(seed=args.seed, protocol=args.protocol, crop=args.crop, scale=args.scale,
                          degradation=args.degradation)
    return 0 if make_set(args.hr, args.out, opts)["images"] else 1


def main(argv: list[str] | None = None) -> int:
    """CLI entry with subcommands ``score``, ``make-set`` and ``compare``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)  # the heavy imports (torch, the metrics) come after the arguments are known to be good
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
