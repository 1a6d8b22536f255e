"""``python -m vosr.launch STAGE ...``: submit any stage to Slurm through submitit, with requeue.

    python -m vosr.launch teacher --config configs/teacher/vosr_0.5b.yaml optim.lr=2e-4 --nodes 4
    python -m vosr.launch distill --config configs/distill/vosr_0.5b_onestep.yaml --time 1440 --partition gpu
    python -m vosr.launch pack --cluster slurm --nodes 1 --gpus-per-node 0 -- DIR --out SHARDS
    python -m vosr.launch teacher --config configs/tiny.yaml --cluster local --gpus-per-node 0 --tasks-per-node 2

The config is loaded and validated here (``vosr.config.load_run_config``) before anything is
submitted, so a bad key or value fails at once on the login node and nothing reaches the queue.
The run folder is fixed at submission (``run_dir=runs/<config stem>-<timestamp>`` unless given),
so every attempt of the job writes to, and resumes from, the same place.

How preemption and requeue work is described in ``vosr.runtime.submit``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import submitit

from vosr.config import load_run_config, resolve_path
from vosr.runtime.submit import Resources, submit_module

logger = logging.getLogger(__name__)

STAGES = {"teacher": "vosr.train", "distill": "vosr.distill", "pack": "data_tools.pack",
          "evaluate": "vosr.evaluate"}
CONFIG_STAGES = ("teacher", "distill")


def submit(stage: str, argv: list[str], res: Resources, cluster: str = "slurm",
           folder: str | Path = "runs/submitit") -> submitit.Job:
    """Submit ``stage`` with ``argv`` (from ``build_argv``); returns the submitit job."""
    return submit_module(STAGES[stage], argv, res, name=f"vosr-{stage}", cluster=cluster, folder=folder)


def _run_dir_for(config: Path, overrides: list[str]) -> tuple[list[str], str]:
    """Split off a ``run_dir=`` override, or make ``runs/<stem>-<timestamp>``; returns (rest, abs dir)."""
    rest = [o for o in overrides if not o.startswith("run_dir=")]
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    run_dir = Path(given[-1]) if given else Path("runs") / f"{config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    return rest, str(run_dir.expanduser().resolve())


def build_argv(stage: str, config: str | None, extra: list[str], world_size: int | None = None) -> list[str]:
    """Validate and return the stage's argv; raises ``ValueError`` naming what to change.

    For teacher/distill the config is loaded with its overrides (``extra``) and must be of that
    stage, then checked by ``vosr.training.preflight`` (paths, positive integers, preset, timm name,
    crop vs patch, and the global batch on ``world_size`` ranks, the submission's geometry, when given);
    the config path and run folder become absolute. For pack/evaluate ``extra`` passes
    through (after ``--config`` when one is given).
    """
    if stage not in CONFIG_STAGES:
        try:
            importlib.import_module(STAGES[stage])  # fail here, not on the cluster, if it cannot be imported
        except ImportError as err:
            raise ValueError(f"stage {stage} ({STAGES[stage]}) cannot be imported: {err}") from err
        return (["--config", config] if config else []) + list(extra)
    if config is None:
        raise ValueError(f"--config is required for stage {stage}")
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        raise ValueError(f"unexpected arguments {bad}: {stage} takes only dotted key=value overrides")
    path = resolve_path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {config} does not exist (--config)")
    cfg = load_run_config(str(path), list(extra))
    if cfg.stage != stage:
        raise ValueError(f"{path} has stage={cfg.stage} but was launched as {stage}; "
                         f"use `vosr.launch {cfg.stage}` or set stage={stage}")
    if world_size is not None:
        from vosr.training.preflight import preflight

        for note in preflight(cfg, world_size):
            logger.info("%s", note)
    overrides, run_dir = _run_dir_for(path, list(extra))
    return ["--config", str(path), *overrides, f"run_dir={run_dir}"]


def memory_summary(stage_argv: list[str], res: Resources) -> str:
    """The memory model's per-rank bytes for the run ``stage_argv`` describes, at the job's world size."""
    from vosr.runtime.memory import GIB
    from vosr.training.memory_plan import config_memory_plan

    cfg = load_run_config(stage_argv[1], stage_argv[2:])
    world = res.nodes * (res.tasks_per_node or res.gpus_per_node or 1)
    plan = config_memory_plan(cfg, world_size=world, device_type="cuda" if res.gpus_per_node else "cpu")
    rows = "\n".join(f"  {k:<13} {v / GIB:9.3f} GiB" for k, v in plan.as_dict().items())
    return (f"memory model per rank: ZeRO-{cfg.engine.zero_stage}, {world} ranks, {cfg.engine.precision}, "
            f"micro-batch {cfg.data.batch_size}, {cfg.data.crop_size}^2 crops, grad_checkpointing="
            f"{cfg.model.grad_checkpointing} (activations are estimated; see vosr/runtime/memory.py)\n{rows}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags, and the rest (overrides, or the stage's own flags after ``--``)."""
    parser = argparse.ArgumentParser(
        prog="python -m vosr.launch", description="Submit a vosr stage to Slurm (submitit), with requeue.",
        epilog="Other arguments: key=value overrides (teacher/distill) or the stage's own flags (pack/evaluate; "
               "put them after --).")
    parser.add_argument("stage", choices=sorted(STAGES), help="what to run: " + ", ".join(
        f"{stage} ({module})" for stage, module in sorted(STAGES.items())))
    parser.add_argument("--config", "-c", help="run config YAML (required for teacher/distill)")
    parser.add_argument("--nodes", type=int, default=1, help="Slurm nodes (default: 1)")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="default: 8, 0 for pack")
    parser.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU")
    parser.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per rank (default: 10)")
    parser.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    parser.add_argument("--time", type=int, default=24 * 60, help="time limit in minutes")
    parser.add_argument("--mem", help="memory per node, Slurm syntax (e.g. 480G, 0 = all)")
    parser.add_argument("--account", help="Slurm account to charge")
    parser.add_argument("--qos", help="Slurm quality of service")
    parser.add_argument("--signal-delay", type=int, default=180, help="seconds of warning before the time limit")
    parser.add_argument("--max-requeues", type=int, default=100,
                        help="give up after this many preemptions or time-outs (default: 100)")
    parser.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                        help="slurm: submit; local: run here as subprocesses; debug: run in this process")
    parser.add_argument("--folder", default="runs/submitit", help="submitit's pickles and logs")
    parser.add_argument("--dry-run", action="store_true", help="validate and show the plan; submit nothing")
    parser.add_argument("--wait", action="store_true", help="block until the job ends; exit with its code")
    args, extra = parser.parse_known_args(argv)
    return args, [a for a in extra if a != "--"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 once submitted (or the job's exit code with ``--wait``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, extra = parse_args(argv)
    gpus = args.gpus_per_node if args.gpus_per_node is not None else (0 if args.stage == "pack" else 8)
    res = Resources(nodes=args.nodes, gpus_per_node=gpus, tasks_per_node=args.tasks_per_node,
                    cpus_per_task=args.cpus_per_task, time_min=args.time, mem=args.mem, partition=args.partition,
                    account=args.account, qos=args.qos, signal_delay_s=args.signal_delay,
                    max_requeues=args.max_requeues)
    try:
        stage_argv = build_argv(args.stage, args.config, extra, world_size=res.nodes * res.ntasks_per_node)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: invalid {args.stage} setup, nothing submitted: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        logger.info("dry run: would submit %s on %s with %s\n  argv: %s", args.stage, args.cluster, asdict(res),
                    " ".join(stage_argv))
        if args.stage in CONFIG_STAGES:
            print(memory_summary(stage_argv, res), flush=True)
        return 0
    job = submit(args.stage, stage_argv, res, cluster=args.cluster, folder=args.folder)
    if not args.wait:
        return 0
    result = job.results()[0]  # global rank 0's return value
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
