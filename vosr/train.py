"""``python -m vosr.train --config CONFIG [key=value ...]``: train the multi-step VOSR teacher.

What ``slurm/train_teacher.sh`` and ``python -m vosr.launch teacher`` run. Exits 0 when done,
2 for a bad config (one line; ``--debug`` for the traceback) and ``EXIT_PREEMPTED`` (75) after a
preemption checkpoint, so the launcher requeues.
"""
from __future__ import annotations

import sys

from vosr.training.cli import load_cli_config, parse_cli, user_errors


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    args = parse_cli(argv, "python -m vosr.train",
                     "Train the multi-step VOSR teacher (flow matching, partial conditioning).")
    with user_errors(args.debug):
        cfg = load_cli_config(args, "teacher")
    # The heavy imports (torch, DeepSpeed) come after the arguments and the config are known to be good.
    from vosr.training.loop import run_training
    from vosr.training.teacher import build_teacher

    return run_training(cfg, build_teacher)


if __name__ == "__main__":
    sys.exit(main())
