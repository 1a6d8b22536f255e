"""``python -m vosr.train --config CONFIG [key=value ...]``: train the multi-step VOSR teacher.

What ``slurm/train_teacher.sh`` and ``python -m vosr.launch teacher`` run. Exits 0 when done
and ``EXIT_PREEMPTED`` (75) after a preemption checkpoint, so the launcher requeues.
"""
from __future__ import annotations

import sys

from vosr.training.cli import load_cli_config
from vosr.training.loop import run_training
from vosr.training.teacher import build_teacher


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    cfg = load_cli_config(argv, "Train the multi-step VOSR teacher (flow matching, partial conditioning).")
    if cfg.stage != "teacher":
        raise SystemExit(f"config has stage={cfg.stage}; use python -m vosr.distill, or set stage=teacher")
    return run_training(cfg, build_teacher)


if __name__ == "__main__":
    sys.exit(main())
