"""``python -m vosr.distill --config CONFIG [key=value ...]``: distil the teacher into a one-step student.

What ``slurm/distill.sh`` and ``python -m vosr.launch distill`` run; the stage itself is
``vosr.training.student``. Exits 0 when done and 75 after a preemption checkpoint.
"""
from __future__ import annotations

import sys

from vosr.training.cli import load_cli_config
from vosr.training.loop import run_training
from vosr.training.student import build_distill, teacher_weights_path


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    cfg = load_cli_config(argv, "Distil a VOSR teacher into a one-step student (RCGM or shortcut).")
    if cfg.stage != "distill":
        raise SystemExit(f"config has stage={cfg.stage}; use python -m vosr.train, or set stage=distill")
    teacher_weights_path(cfg.distill.teacher)  # fail before any heavy work
    return run_training(cfg, build_distill)


if __name__ == "__main__":
    sys.exit(main())
