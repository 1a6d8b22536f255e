"""Submit any ``python -m MODULE`` entry point to Slurm through submitit, with requeue on preemption.

The runtime half of ``python -m vosr.launch``: it knows modules and resources, not stages.

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
  ``StageJob.checkpoint`` resubmits only ``(module, argv)``: model state is never pickled.
"""
from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from vosr.runtime.preemption import EXIT_PREEMPTED

logger = logging.getLogger(__name__)


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
    ``slurm/stage.sh``.
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


class StageJob(submitit.helpers.Checkpointable):
    """The submitted callable: exports the rank environment and runs ``MODULE.main(argv)``.

    Holds only the module name and its argv (config path, overrides, fixed ``run_dir``).
    """

    def __init__(self, module: str, argv: list[str], max_requeues: int = 100) -> None:
        self.module = module
        self.argv = list(argv)
        self.max_requeues = max_requeues

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        if env.cluster == "slurm":  # VOSR_MASTER_ADDR wins, as in slurm/stage.sh
            os.environ["MASTER_ADDR"] = os.environ.get("VOSR_MASTER_ADDR") or rendezvous_addr(dist_env.master_addr)
        # Every rank, into its own task log (the stage's logging, set up later, shows INFO on rank 0 only).
        print(f"[vosr.launch] {self.module}: rank {dist_env.rank}/{dist_env.world_size} on {env.hostname} "
              f"(node {env.node}), master {os.environ['MASTER_ADDR']}:{dist_env.master_port}, argv {self.argv}",
              file=sys.stderr, flush=True)
        rc = importlib.import_module(self.module).main(list(self.argv))
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
        return submitit.helpers.DelayedSubmission(StageJob(self.module, self.argv, self.max_requeues))


def make_executor(folder: str | Path, cluster: str, name: str, res: Resources) -> submitit.AutoExecutor:
    """A submitit executor for ``cluster`` (slurm, local or debug) with ``res`` applied."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = dict(name=name, timeout_min=res.time_min, nodes=res.nodes,
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


def submit_module(module: str, argv: list[str], res: Resources, *, name: str, cluster: str = "slurm",
                  folder: str | Path = "runs/submitit") -> submitit.Job:
    """Submit ``StageJob(module, argv)`` as job ``name``; returns the submitit job."""
    executor = make_executor(folder, cluster, name, res)
    job = executor.submit(StageJob(module, argv, res.max_requeues))
    logger.info("submitted %s as job %s (%s); logs in %s", name, job.job_id, cluster, job.paths.stdout)
    return job
