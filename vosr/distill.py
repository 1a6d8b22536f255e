"""``python -m vosr.distill --config CONFIG [key=value ...]``: distil the teacher into a one-step student.

What ``slurm/distill.sh`` and ``python -m vosr.launch distill`` run; the stage itself is
``vosr.training.student``. Exits 0 when done, 2 for a bad config (one line; ``--debug`` for the
traceback) and 75 after a preemption checkpoint.
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
    args = parse_cli(argv, "python -m vosr.distill",
                     "Distil a VOSR teacher into a one-step student (RCGM or shortcut).")
    with user_errors(args.debug):
        cfg = load_cli_config(args, "distill")  # also checks distill.teacher before any heavy work
    # The heavy imports (torch, DeepSpeed) come after the arguments and the config are known to be good.
    if flag.requested:
        print(f"preempted ({flag.signal_name}) before start-up: exiting for requeue", file=sys.stderr)
        return EXIT_PREEMPTED
    from vosr.training.loop import run_training
    from vosr.training.student import build_distill

    return run_training(cfg, build_distill, flag)


if __name__ == "__main__":
    sys.exit(main())
