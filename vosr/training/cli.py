"""The command line of the training stages: ``--config PATH [key=value ...]``, loaded, validated
and checked for every file it names before any heavy work starts (nothing here imports torch).

A bad config is a user error: one line ``error: <message>`` and exit status 2, with the
traceback only under ``--debug``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from vosr.config import RunConfig, load_run_config
from vosr.data.mix import resolve_sources
from vosr.training.export import export_file

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
"""What bad input raises (``ConfigError`` is a ``ValueError``); anything else is a bug and keeps its traceback."""
OTHER_STAGE = {"teacher": "vosr.distill", "distill": "vosr.train"}


def parse_cli(argv: list[str] | None, prog: str, description: str) -> argparse.Namespace:
    """``--config PATH [key=value ...] [--debug]``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     epilog="Overrides are dotted keys, e.g. optim.lr=2e-4 data.batch_size=8; "
                                            "every key and its default: vosr/config/run.py")
    parser.add_argument("--config", "-c", required=True, help="run config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a config error")
    return parser.parse_args(argv)


@contextlib.contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Turn bad input into ``error: <message>`` on stderr and exit status 2 (re-raise under ``debug``)."""
    try:
        yield
    except USER_ERRORS as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def load_cli_config(args: argparse.Namespace, stage: str) -> RunConfig:
    """A validated ``RunConfig`` of ``stage`` with every file it names present; raises naming the key."""
    cfg = load_run_config(args.config, args.overrides)
    if cfg.stage != stage:
        raise ValueError(f"config has stage={cfg.stage}; use python -m {OTHER_STAGE[stage]}, or set stage={stage}")
    if cfg.name is None:
        cfg.name = Path(args.config).stem
    from vosr.training.preflight import preflight, world_size_from_env

    for note in preflight(cfg, world_size_from_env()):  # every check, before any heavy work
        if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":
            print(f"note: {note}", file=sys.stderr)
    return cfg


def check_paths(cfg: RunConfig) -> None:
    """Every file the run will read exists; raises naming the config key (before any GPU work)."""
    wanted = [("autoencoder.path", cfg.autoencoder.path), ("autoencoder.decoder_path", cfg.autoencoder.decoder_path),
              ("model.init_from", cfg.model.init_from)]
    if cfg.semantic.kind != "none" and not cfg.semantic.random_init:
        wanted.append(("semantic.path", cfg.semantic.path))
    for key, value in wanted:
        if value is not None and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key}={value} does not exist; set {key} to a local file")
    if cfg.stage == "distill":
        export_file(cfg.distill.teacher, "distill.teacher")
        if cfg.distill.lpips_weight > 0:
            from vosr.evaluation.metrics import lpips_unavailable_reason

            if (reason := lpips_unavailable_reason()) is not None:
                raise FileNotFoundError(f"distill.lpips_weight={cfg.distill.lpips_weight} needs LPIPS: {reason}; "
                                        "or set distill.lpips_weight=0")
    resolve_sources(cfg.data)  # raises FileNotFoundError naming data.train / data.mix_file


def run_stage(argv: list[str] | None, prog: str, description: str, stage: str, builder: str) -> int:
    """``vosr.train`` / ``vosr.distill``: parse, check the config, then train with ``builder``
    (``"module:function"``, imported only once the config is known to be good).

    First of all a preemption handler is installed: a signal during the slow start-up (imports,
    DeepSpeed, models) is recorded, and the run exits 75 (requeue) instead of dying of the signal.
    """
    import importlib

    from vosr.runtime.preemption import EXIT_PREEMPTED, PreemptionFlag

    flag = PreemptionFlag().install()
    try:
        args = parse_cli(argv, prog, description)
        with user_errors(args.debug):
            cfg = load_cli_config(args, stage)
        if flag.requested:
            print(f"preempted ({flag.signal_name}) before start-up: exiting for requeue", file=sys.stderr)
            return EXIT_PREEMPTED
        # The heavy imports (torch, DeepSpeed) come after the arguments and the config are known to be good.
        from vosr.training.loop import run_training

        module, name = builder.split(":")
        return run_training(cfg, getattr(importlib.import_module(module), name), flag)
    finally:
        flag.uninstall()
