"""``python -m vosr.distill --config CONFIG [key=value ...]``: distil the teacher into a one-step student.

What ``slurm/distill.sh`` and ``python -m vosr.launch distill`` run; the stage itself is
``vosr.training.student``. Exits 0 when done, 2 for a bad config (one line; ``--debug`` for the
traceback) and 75 after a preemption checkpoint.
"""
from __future__ import annotations

import sys

from vosr.training.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    return run_stage(argv, "python -m vosr.distill",
                     "Distil a VOSR teacher into a one-step student (RCGM or shortcut).",
                     "distill", "vosr.training.student:build_distill")


if __name__ == "__main__":
    sys.exit(main())
