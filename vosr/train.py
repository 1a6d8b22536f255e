"""``python -m vosr.train --config CONFIG [key=value ...]``: train the multi-step VOSR teacher.

What ``slurm/train_teacher.sh`` and ``python -m vosr.launch teacher`` run. Exits 0 when done,
2 for a bad config (one line; ``--debug`` for the traceback) and ``EXIT_PREEMPTED`` (75) after a
preemption checkpoint, so the launcher requeues.
"""
from __future__ import annotations

import sys

from vosr.training.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    return run_stage(argv, "python -m vosr.train",
                     "Train the multi-step VOSR teacher (flow matching, partial conditioning).",
                     "teacher", "vosr.training.teacher:build_teacher")


if __name__ == "__main__":
    sys.exit(main())
