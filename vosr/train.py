"""``python -m vosr.train --config CONFIG [key=value ...]``: train the multi-step VOSR teacher.

What ``slurm/train_teacher.sh`` and ``python -m vosr.launch teacher`` run. Exits 0 when done,
2 for a bad config (one line; ``--debug`` for the traceback) and ``EXIT_PREEMPTED`` (75) after a
preemption checkpoint, so the launcher requeues.
"""
from __future__ import annotations

import sys

from vosr.runtime.preemption import EXIT_PREEMPTED, PreemptionFlag
from vosr.training.cli import load_cli_config, parse_cli, user_errors


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    # First of all: a preemption signal during the slow start-up (imports, DeepSpeed, models) is recorded,
    # and the run exits 75 (requeue) at its first step boundary instead of dying of the signal.
    flag = PreemptionFlag().install()
    try:
        return _main(argv, flag)
    finally:
        flag.uninstall()


def _main(argv: list[str] | None, flag: PreemptionFlag) -> int:
    args = parse_cli(argv, "python -m vosr.train",
                     "Train the multi-step VOSR teacher (flow matching, partial conditioning).")
    with user_errors(args.debug):
        cfg = load_cli_config(args, "teacher")
    # The heavy imports (torch, DeepSpeed) come after the arguments and the config are known to be good.
    if flag.requested:
        print(f"preempted ({flag.signal_name}) before start-up: exiting for requeue", file=sys.stderr)
        return EXIT_PREEMPTED
    from vosr.training.loop import run_training
    from vosr.training.teacher import build_teacher

    return run_training(cfg, build_teacher, flag)


if __name__ == "__main__":
    sys.exit(main())
