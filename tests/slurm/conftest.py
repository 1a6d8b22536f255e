"""A private Slurm cluster for the Slurm tests: started once per session under a temporary folder.

``scripts/local_slurm.sh start PREFIX`` gives the cluster its own config, munge key and socket,
state, spool, logs and ports, all under PREFIX; the fixture points ``SLURM_CONF`` at it for the
session (every ``sbatch``/``scontrol`` of the tests and of their jobs talks to this cluster only),
and at the end stops the daemons it started, by their pids. A system Slurm is neither used nor
touched: ``test_private_cluster.py`` checks that, last in the session.

Waits carry one hang guard, ``HANG_GUARD_S``, far above the slowest honest run (about a minute on
an idle machine), so a busy machine is slow but never fails; a hang fails with what it waited for.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
HANG_GUARD_S = 1800
"""Longest wait for one job or event; honest runs take seconds to about a minute on an idle machine."""
# CPU test jobs: one node, two ranks, no GPUs; these flags beat the scripts' #SBATCH GPU defaults.
# The time limit is a hang guard too: the scripts' time-limit signal (USR1@180) must never fire by accident.
CPU_FLAGS = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
             "--mem=0", "--time=120"]
SYSTEM_PATHS = (Path("/etc/slurm"), Path("/etc/munge"))
DAEMONS = ("slurmctld", "slurmd", "munged", "slurmdbd")


def etc_snapshot(paths: tuple[Path, ...] = SYSTEM_PATHS) -> dict[str, tuple]:
    """(mode, size, mtime, content hash when readable) of every entry under ``paths``."""
    snap: dict[str, tuple] = {}
    for root in paths:
        entries = [root, *sorted(root.rglob("*"))] if root.exists() else []
        for p in entries:
            st = p.lstat()
            digest = None
            if p.is_file() and not p.is_symlink():
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:
                    pass
            snap[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return snap


def daemon_processes() -> dict[int, str]:
    """pid -> command line of every running Slurm or munge daemon on this machine."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0] and Path(args[0].decode(errors="replace")).name in DAEMONS:
            found[int(proc.name)] = " ".join(a.decode(errors="replace") for a in args if a)
    return found


# Taken when the Slurm tests are collected, before any test of the session runs.
ETC_BEFORE = etc_snapshot()
SYSTEM_DAEMONS_BEFORE = daemon_processes()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.slurm)
            # pytest's default timeout (600 s) must not cut a slow but honest run short: the waits'
            # own guard (HANG_GUARD_S, with a message) comes first.
            item.add_marker(pytest.mark.timeout(3 * HANG_GUARD_S))
    # The check that the suite left /etc and a system Slurm alone runs after every other test.
    last = [i for i in items if i.name == "test_suite_left_system_slurm_alone"]
    items[:] = [i for i in items if i not in last] + last


def job_env() -> dict[str, str]:
    """The submitter's environment for test jobs: this interpreter (VOSR_PYTHON), CPU, offline.

    It carries the private cluster's ``SLURM_CONF``. PATH stays as it is: a different ``ninja``
    first on PATH makes torch rebuild JIT ops for every other test that uses them.
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
    """Thin helpers over the Slurm CLI of the private cluster (``SLURM_CONF`` is set for the session)."""

    prefix: Path
    conf: Path
    pids: dict[str, int]
    """Daemon name -> pid, as the daemons wrote them under ``prefix/run``."""

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

    def wait(self, job_id: str, log: Path | None = None, what: str = "") -> dict[str, str]:
        """Poll until the job reaches a terminal state and leaves the queue; returns its record."""
        def done() -> bool:
            return self.show_job(job_id).get("JobState") in TERMINAL_STATES and not self.in_queue(job_id)

        try:
            self.wait_for(done, f"job {job_id} {what}".strip() + " to finish", poll_s=0.5)
        except TimeoutError as err:
            subprocess.run(["scancel", job_id], check=False)
            tail = log.read_text()[-4000:] if log is not None and log.exists() else "(no log)"
            raise TimeoutError(f"{err}: {self.show_job(job_id)}\n{tail}") from None
        return self.show_job(job_id)

    def wait_for(self, predicate: Callable[[], bool], what: str, poll_s: float = 0.2) -> None:
        """Poll ``predicate()`` until true; after ``HANG_GUARD_S`` fail naming ``what`` was awaited."""
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(poll_s)
        raise TimeoutError(f"hang guard: still waiting for {what} after {HANG_GUARD_S}s")

    def signal_batch(self, job_id: str, sig: str = "USR1") -> None:
        """Send ``sig`` to the batch shell only, as ``--signal=B:USR1@T`` does at the time limit."""
        subprocess.run(["scancel", f"--signal={sig}", "--batch", job_id], check=True)


def _read_pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().strip()) for p in sorted(run_dir.glob("*.pid")) if p.read_text().strip()}


def _stop(prefix: Path, pids: dict[str, int]) -> None:
    """Cancel the cluster's jobs, stop its daemons by their pids, and make sure each one is gone."""
    subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True, check=False)
    subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), "stop", str(prefix)], capture_output=True,
                   check=False)
    for name, pid in pids.items():
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise RuntimeError(f"{name} ({pid}) of the private Slurm cluster did not stop; killed it")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Start the private cluster; skip when the Slurm binaries are not installed."""
    needed = ("slurmctld", "slurmd", "sbatch", "munged")
    missing = [b for b in needed if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): "
                    "apt-get install slurmctld slurmd slurm-client munge")
    prefix = tmp_path_factory.mktemp("slurm")  # kept after the run (pytest keeps the last 3): logs to read
    if len(str(prefix)) > 70:  # socket paths live under it (108-byte limit)
        prefix = Path(tempfile.mkdtemp(prefix="vosr-slurm-", dir="/tmp"))
    conf = prefix / "etc" / "slurm.conf"
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # for the tests' own scontrol/squeue/submitit calls and their jobs
    out = subprocess.run(["bash", str(REPO / "scripts" / "local_slurm.sh"), "start", str(prefix)],
                         capture_output=True, text=True)
    pids = _read_pids(prefix / "run")
    try:
        if out.returncode != 0:
            raise RuntimeError(f"scripts/local_slurm.sh start {prefix} failed:\n{out.stdout}\n{out.stderr}")
        yield SlurmCluster(prefix=prefix, conf=conf, pids=pids)
    finally:
        _stop(prefix, pids)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
