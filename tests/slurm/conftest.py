"""A real local Slurm cluster for the Slurm tests (started once per session by scripts/local_slurm.sh)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# CPU test jobs: one node, two ranks, no GPUs; these flags beat the scripts' #SBATCH GPU defaults.
CPU_FLAGS = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
             "--mem=0", "--time=10"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.slurm)


def job_env() -> dict[str, str]:
    """The submitter's environment for test jobs: this interpreter (VOSR_PYTHON), CPU, offline.

    PATH stays as it is: a different ``ninja`` first on PATH makes torch rebuild DeepSpeed's JIT
    ops (~1 min) for every other test that uses them.
    """
    env = dict(os.environ)
    env.update(VOSR_PYTHON=sys.executable, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1",
               WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    # The scripts find the repository themselves (VOSR_ROOT unset), as they do for users.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VOSR_ROOT", "VOSR_RUN_DIR"):
        env.pop(key, None)
    return env


@dataclass
class SlurmCluster:
    """Thin helpers over the Slurm CLI of the running local cluster."""

    def sbatch(self, args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
        """Submit; returns the job id."""
        out = subprocess.run(["sbatch", "--parsable", *args], env=env or job_env(), cwd=cwd,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {args} failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (empty once Slurm forgot the job)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        if out.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def in_queue(self, job_id: str) -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        return bool(out.stdout.strip())

    def wait(self, job_id: str, timeout_s: float, log: Path | None = None) -> dict[str, str]:
        """Poll until the job reaches a terminal state and leaves the queue; returns its record."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.show_job(job_id)
            if info.get("JobState") in TERMINAL_STATES and not self.in_queue(job_id):
                return info
            time.sleep(0.5)
        subprocess.run(["scancel", job_id], check=False)
        tail = log.read_text()[-4000:] if log is not None and log.exists() else "(no log)"
        raise TimeoutError(f"job {job_id} not finished after {timeout_s}s: {self.show_job(job_id)}\n{tail}")

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        """Poll ``predicate()`` until true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")

    def signal_batch(self, job_id: str, sig: str = "USR1") -> None:
        """Send ``sig`` to the batch shell only, as ``--signal=B:USR1@T`` does at the time limit."""
        subprocess.run(["scancel", f"--signal={sig}", "--batch", job_id], check=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Start (or reuse) the local cluster; skip when the Slurm binaries are not installed."""
    needed = ("slurmctld", "slurmd", "sbatch", "munged")
    missing = [b for b in needed if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): "
                    "apt-get install slurmctld slurmd slurm-client munge")
    out = subprocess.run([str(REPO / "scripts" / "local_slurm.sh"), "start"], capture_output=True, text=True,
                         timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/local_slurm.sh start failed:\n{out.stdout}\n{out.stderr}")
    return SlurmCluster()
