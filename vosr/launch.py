"""``python -m vosr.launch STAGE ...``: submit any stage to Slurm through submitit, with requeue.

    python -m vosr.launch teacher --config configs/teacher/x4.yaml optim.lr=2e-4 --nodes 4
    python -m vosr.launch distill --config configs/distill/x4.yaml --time 1440 --partition gpu
    python -m vosr.launch pack --cluster slurm --nodes 1 --gpus-per-node 0 -- DIR --out SHARDS
    python -m vosr.launch teacher --config configs/tiny.yaml --cluster local --gpus-per-node 0 --tasks-per-node 2

The config is loaded and validated here (``vosr.config.load_run_config``) before anything is
submitted, so a bad key or value fails at once on the login node and nothing reaches the queue.
The run folder is fixed at submission (``run_dir=runs/<config stem>-<timestamp>`` unless given),
so every attempt of the job writes to, and resumes from, the same place.

Preemption and time-outs (how the pieces fit):

* submitit asks Slurm for ``--signal=USR2@<signal_delay_s>``, delivered to every task. Before it
  calls our job, submitit installs its own handler for USR2 that, on global rank 0, calls the
  callable's ``checkpoint()``, writes the returned resubmission, runs ``scontrol requeue`` and
  exits right inside the handler; other ranks just log (``submitit/core/job_environment.py``).
  Exiting from inside a signal handler in the middle of a step would leave the other ranks in a
  collective and the DeepSpeed/ZeRO state unsaved, so it must not happen while training.
* The training loop therefore installs ``vosr.runtime.preemption.PreemptionFlag`` for USR1, USR2
  and TERM for as long as it runs, replacing submitit's handler. The handler only records the
  signal; at the next step boundary the ranks agree (``any_rank``), save one checkpoint
  *collectively*, tear down the process group and return ``EXIT_PREEMPTED`` (75).
* ``StageJob.__call__`` sees 75: global rank 0 runs ``scontrol requeue`` (Slurm keeps the job id;
  submitit re-runs the same pickled ``StageJob`` on the next attempt) and every rank leaves with
  ``SystemExit`` so submitit writes no result file and the client keeps waiting.
* The requeued attempt calls the stage's ``main`` with the same config path, overrides and
  ``run_dir``, and ``checkpoint.resume=auto`` resumes from the newest complete checkpoint.
* Outside the loop (start-up, final export) submitit's own handler stays in charge: there is no
  unsaved training state then, so its immediate ``checkpoint()`` + requeue is correct.
  ``StageJob.checkpoint`` resubmits only ``(stage, argv)``: model state is never pickled.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit

from vosr.config import load_run_config, resolve_path
from vosr.runtime.preemption import EXIT_PREEMPTED

logger = logging.getLogger(__name__)

STAGES = {"teacher": "vosr.train", "distill": "vosr.distill", "pack": "data_tools.pack",
          "evaluate": "vosr.evaluate"}
CONFIG_STAGES = ("teacher", "distill")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one submission asks Slurm for."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None
    """Ranks per node; None = one per GPU (1 without GPUs)."""
    cpus_per_task: int = 10
    time_min: int = 24 * 60
    mem: str | None = None
    """Slurm ``--mem`` per node (e.g. ``480G``; ``0`` = all)."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = 180
    """Seconds before the time limit at which the preemption signal arrives."""
    max_requeues: int = 100
    """Stop requeueing after this many restarts of one job."""

    @property
    def ntasks_per_node(self) -> int:
        """Ranks per node actually requested."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def rendezvous_addr(node: str) -> str:
    """``node`` if it resolves as a host name, else the NodeAddr Slurm reaches it at.

    A NodeName need not be a host name (virtual nodes, site naming); asking slurmctld only then
    keeps thousands of ranks from querying it at once on ordinary clusters. Same rule as
    ``slurm/common.sh``.
    """
    try:
        socket.gethostbyname(node)
        return node
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return node
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("NodeAddr") or node


def _stage_main(stage: str):
    """The ``main(argv)`` of a stage, imported lazily (``data_tools`` lives beside the package)."""
    if str(REPO_ROOT) not in sys.path and (REPO_ROOT / "data_tools").is_dir():
        sys.path.append(str(REPO_ROOT))
    return importlib.import_module(STAGES[stage]).main


class StageJob(submitit.helpers.Checkpointable):
    """The submitted callable: exports the rank environment and runs one stage's ``main(argv)``.

    Holds only the stage name and its argv (config path, overrides, fixed ``run_dir``).
    """

    def __init__(self, stage: str, argv: list[str], max_requeues: int = 100) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        self.stage = stage
        self.argv = list(argv)
        self.max_requeues = max_requeues

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        if env.cluster == "slurm":  # VOSR_MASTER_ADDR wins, as in slurm/common.sh
            os.environ["MASTER_ADDR"] = os.environ.get("VOSR_MASTER_ADDR") or rendezvous_addr(dist_env.master_addr)
        # Every rank, into its own task log (the stage's logging, set up later, shows INFO on rank 0 only).
        print(f"[vosr.launch] {self.stage}: rank {dist_env.rank}/{dist_env.world_size} on {env.hostname} "
              f"(node {env.node}), master {os.environ['MASTER_ADDR']}:{dist_env.master_port}, argv {self.argv}",
              file=sys.stderr, flush=True)
        rc = _stage_main(self.stage)(list(self.argv))
        rc = 0 if rc is None else int(rc)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if rc != EXIT_PREEMPTED or env.cluster != "slurm" or restarts >= self.max_requeues:
            return rc
        if env.global_rank == 0:  # the checkpoint is on disk: every rank saved before main returned
            logger.warning("preempted after a checkpoint: requeueing job %s (restart %d)", env.job_id, restarts)
            subprocess.run(["scontrol", "requeue", env.job_id], check=True, timeout=60)
        raise SystemExit(EXIT_PREEMPTED)  # no result file: the client waits for the requeued attempt

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same stage and argv (no model state; the run resumes from its run_dir)."""
        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.argv, self.max_requeues))


def _run_dir_for(config: Path, overrides: list[str]) -> tuple[list[str], str]:
    """Split off a ``run_dir=`` override, or make ``runs/<stem>-<timestamp>``; returns (rest, abs dir)."""
    rest = [o for o in overrides if not o.startswith("run_dir=")]
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    run_dir = Path(given[-1]) if given else Path("runs") / f"{config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    return rest, str(run_dir.expanduser().resolve())


def build_argv(stage: str, config: str | None, extra: list[str]) -> list[str]:
    """Validate and return the stage's argv; raises ``ValueError`` naming what to change.

    For teacher/distill the config is loaded with its overrides (``extra``) and must be of that
    stage; the config path and run folder become absolute. For pack/evaluate ``extra`` passes
    through (after ``--config`` when one is given).
    """
    if stage not in CONFIG_STAGES:
        try:
            _stage_main(stage)  # fail here, not on the cluster, when the stage cannot be imported
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
    overrides, run_dir = _run_dir_for(path, list(extra))
    return ["--config", str(path), *overrides, f"run_dir={run_dir}"]


def make_executor(folder: str | Path, cluster: str, stage: str, res: Resources) -> submitit.AutoExecutor:
    """A submitit executor for ``cluster`` (slurm, local or debug) with ``res`` applied."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = dict(name=f"vosr-{stage}", timeout_min=res.time_min, nodes=res.nodes,
                                  tasks_per_node=res.ntasks_per_node, gpus_per_node=res.gpus_per_node,
                                  cpus_per_task=res.cpus_per_task)
    if cluster == "slurm":
        params.update(slurm_signal_delay_s=res.signal_delay_s,
                      slurm_additional_parameters={"requeue": True, "open-mode": "append"})
        for key in ("partition", "account", "qos", "mem"):
            if getattr(res, key) is not None:
                params[f"slurm_{key}"] = getattr(res, key)
    executor.update_parameters(**params)
    return executor


def submit(stage: str, argv: list[str], res: Resources, cluster: str = "slurm",
           folder: str | Path = "runs/submitit") -> submitit.Job:
    """Submit ``StageJob(stage, argv)``; returns the submitit job."""
    executor = make_executor(folder, cluster, stage, res)
    job = executor.submit(StageJob(stage, argv, res.max_requeues))
    logger.info("submitted %s as job %s (%s); logs in %s", stage, job.job_id, cluster, job.paths.stdout)
    return job


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags, and the rest (overrides, or the stage's own flags after ``--``)."""
    parser = argparse.ArgumentParser(
        prog="python -m vosr.launch", description="Submit a vosr stage to Slurm (submitit), with requeue.",
        epilog="Other arguments: key=value overrides (teacher/distill) or the stage's own flags (pack/evaluate; "
               "put them after --).")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", "-c", help="run config YAML (required for teacher/distill)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=None, help="default: 8, 0 for pack")
    parser.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU")
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--partition")
    parser.add_argument("--time", type=int, default=24 * 60, help="time limit in minutes")
    parser.add_argument("--mem", help="memory per node, Slurm syntax (e.g. 480G, 0 = all)")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--signal-delay", type=int, default=180, help="seconds of warning before the time limit")
    parser.add_argument("--max-requeues", type=int, default=100)
    parser.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm")
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
        stage_argv = build_argv(args.stage, args.config, extra)
    except (ValueError, FileNotFoundError) as err:
        logger.error("not submitted: %s", err)
        raise SystemExit(f"vosr.launch: invalid {args.stage} setup, nothing submitted: {err}") from err
    if args.dry_run:
        logger.info("dry run: would submit %s on %s with %s\n  argv: %s", args.stage, args.cluster, asdict(res),
                    " ".join(stage_argv))
        return 0
    job = submit(args.stage, stage_argv, res, cluster=args.cluster, folder=args.folder)
    if not args.wait:
        return 0
    result = job.results()[0]  # global rank 0's return value
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
