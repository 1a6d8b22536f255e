"""Evaluation CLI: ``python -m vosr.evaluate score ...`` and ``python -m vosr.evaluate make-set ...``.

``score`` measures a folder of outputs, paired against ground truth (``--gt``: PSNR/SSIM on Y
with a ``--scale``-pixel border crop, LPIPS, DISTS) and without reference (NIQE, MUSIQ, MANIQA,
CLIP-IQA when pyiqa and their weights are on disk). Files pair by stem. It writes
``per_image.csv``, ``summary.json`` (means, unavailable metrics with reasons) and
``comparison.png`` (LR | output | GT with zoomed crops). ``make-set`` builds HR/LR pairs
(see ``vosr.evaluation.evalsets``).
"""
from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

# Names only, so --help needs no torch; tests check they match vosr.evaluation's METRICS and PROTOCOLS.
ALL_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa")
PROTOCOLS = ("realesrgan", "bicubic")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of both subcommands."""
    parser = argparse.ArgumentParser(prog="python -m vosr.evaluate",
                                     description="Score super-resolved images, or build HR/LR evaluation pairs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{score,make-set}",
                                help="run python -m vosr.evaluate COMMAND --help for its options")
    s = sub.add_parser("score", help="metrics of a folder of outputs (paired with --gt, or no-reference)",
                       description="Metrics of a folder of SR outputs, paired by file stem with --gt (PSNR/SSIM on "
                                   "Y, LPIPS, DISTS) and without reference (NIQE, MUSIQ, MANIQA, CLIP-IQA, when "
                                   "their weights are on disk); writes per_image.csv, summary.json, comparison.png.")
    s.add_argument("--pred", required=True, help="folder of SR outputs")
    s.add_argument("--gt", default=None, help="folder of ground-truth HR images (same stems)")
    s.add_argument("--lr", default=None, help="folder of LR inputs (for the comparison sheet)")
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--scale", type=int, default=4, help="SR factor; PSNR/SSIM crop this many border pixels")
    s.add_argument("--metrics", nargs="+", default=list(ALL_METRICS), choices=ALL_METRICS, help="metrics to compute")
    s.add_argument("--sheet-rows", type=int, default=6, help="images on the comparison sheet (0 = no sheet)")
    s.add_argument("--device", default="auto", help="cpu, cuda, ... (auto = cuda when available)")
    m = sub.add_parser("make-set", help="HR/LR evaluation pairs from HR images at a fixed seed",
                       description="Centre-crop HR images and degrade them into LR inputs at a fixed seed "
                                   "(writes HR/, LR/ and manifest.json).")
    m.add_argument("--hr", required=True, help="folder of HR images")
    m.add_argument("--out", required=True, help="output folder (gets HR/, LR/, manifest.json)")
    m.add_argument("--seed", type=int, default=0, help="degradation seed (default: 0)")
    m.add_argument("--protocol", choices=PROTOCOLS, default="realesrgan",
                   help="realesrgan: the second-order degradation; bicubic: plain bicubic downscaling")
    m.add_argument("--crop", type=int, default=512, help="centre-crop side of the HR images (pixels)")
    m.add_argument("--scale", type=int, default=None, help="downscaling factor (default: the degradation's)")
    m.add_argument("--degradation", default=None, help="degradation YAML (default configs/degradation/realesrgan.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry with subcommands ``score`` and ``make-set``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The heavy imports (torch, the metrics) come after the arguments are known to be good.
    from vosr.evaluation.evalsets import MakeSetOptions, make_set
    from vosr.evaluation.score import score

    try:
        if args.command == "score":
            return score(args)
        opts = MakeSetOptions(seed=args.seed, protocol=args.protocol, crop=args.crop, scale=args.scale,
                              degradation=args.degradation)
        manifest = make_set(args.hr, args.out, opts)
        return 0 if manifest["images"] else 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
