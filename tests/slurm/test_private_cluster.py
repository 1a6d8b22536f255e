"""The Slurm tests use a private cluster and leave the machine's own Slurm alone."""
from __future__ import annotations

from pathlib import Path

from tests.slurm.conftest import (
    ETC_BEFORE,
    SYSTEM_DAEMONS_BEFORE,
    SYSTEM_PATHS,
    SlurmCluster,
    daemon_processes,
    etc_snapshot,
)

PROBE = """#!/bin/bash
echo "cluster=$SLURM_CLUSTER_NAME conf=$SLURM_CONF"
srun --ntasks=1 bash -c 'echo "step on $SLURMD_NODENAME conf=$SLURM_CONF"'
scontrol show config | grep -E '^(ClusterName|SlurmctldPort|StateSaveLocation) '
"""


def test_jobs_run_on_the_private_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    prefix = str(slurm_cluster.prefix)
    assert str(slurm_cluster.conf).startswith(prefix) and not str(slurm_cluster.conf).startswith("/etc")
    assert not any(str(p).startswith(prefix) for p in SYSTEM_PATHS)
    script, log = tmp_path / "probe.sh", tmp_path / "probe-%j.out"
    script.write_text(PROBE)
    job = slurm_cluster.sbatch(["--ntasks=1", "--time=10", f"--output={log}", str(script)])
    log = Path(str(log).replace("%j", job))
    info = slurm_cluster.wait(job, log, "(the probe)")
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text
    assert f"cluster=vosr-test conf={slurm_cluster.conf}" in text, text
    assert f"conf={slurm_cluster.conf}" in text.split("step on ", 1)[1], text
    assert f"StateSaveLocation       = {prefix}/state" in text, text
    # Each daemon the fixture started runs from the prefix, under its own pid.
    running = daemon_processes()
    assert {"munged", "slurmctld", "slurmd-vosr-n1"} <= set(slurm_cluster.pids), slurm_cluster.pids
    for name, pid in slurm_cluster.pids.items():
        assert pid in running and pid not in SYSTEM_DAEMONS_BEFORE, (name, pid)
        assert prefix in running[pid], running[pid]


def test_suite_left_system_slurm_alone() -> None:
    """Runs last (conftest orders it): /etc/slurm and /etc/munge as before the session, system daemons alive."""
    assert etc_snapshot() == ETC_BEFORE, "the test suite changed /etc/slurm or /etc/munge"
    now = daemon_processes()
    for pid, args in SYSTEM_DAEMONS_BEFORE.items():
        assert now.get(pid) == args, f"system daemon {pid} ({args}) was stopped or replaced by the tests"
