"""The run lock and the config identity, without a training run (fast)."""
from __future__ import annotations

import json
import socket
import subprocess

import pytest

from vosr.training.guard import (
    ConfigMismatchError,
    RunLock,
    RunLockError,
    _start_time,
    check_identity,
    config_identity,
)


def _plant(run_dir, **owner) -> None:
    (run_dir / ".vosr.lock").write_text(json.dumps(owner))


def test_live_owner_on_this_host_blocks(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        _plant(tmp_path, host=socket.gethostname(), pid=other.pid, pid_start=_start_time(other.pid), job_id=None)
        with pytest.raises(RunLockError, match=rf"in use by pid {other.pid} on {socket.gethostname()}.*stop that run"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    lock = RunLock(tmp_path).acquire()  # now dead: stale, taken over
    assert lock.held and json.loads(lock.path.read_text())["pid"] != other.pid
    lock.release()
    assert not lock.path.exists()


def test_reused_pid_and_requeued_job_take_over(tmp_path, monkeypatch):
    _plant(tmp_path, host=socket.gethostname(), pid=1, pid_start="1", job_id=None)  # pid 1 lives, but started otherwise
    RunLock(tmp_path).acquire().release()
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    _plant(tmp_path, host="gpu-node-3", pid=123, job_id="4711")  # an earlier attempt of this job, on another node
    RunLock(tmp_path).acquire().release()


def test_other_host_says_who_and_how_to_break(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _plant(tmp_path, host="gpu-node-3", pid=123, job_id="99", started=0)
    with pytest.raises(RunLockError) as err:
        RunLock(tmp_path).acquire()
    assert "pid 123 on gpu-node-3, job 99" in str(err.value) and f"delete {tmp_path / '.vosr.lock'}" in str(err.value)


def test_identity_mismatch_is_refused_unless_allowed(tmp_path):
    base = {"stage": "teacher", "seed": 0, "model": {"preset": "tiny", "compile": False}, "data": {"crop_size": 64}}
    changed = {**base, "seed": 1, "model": {"preset": "0.5B", "compile": True}}
    with pytest.raises(ConfigMismatchError, match=r"model.preset: 'tiny' -> '0.5B'; seed: 0 -> 1"):
        check_identity(config_identity(base), config_identity(changed), tmp_path, allow=False)
    check_identity(config_identity(base), config_identity(changed), tmp_path, allow=True)
    same = {**base, "model": {"preset": "tiny", "compile": True}}  # compile is not identity
    check_identity(config_identity(base), config_identity(same), tmp_path, allow=False)


def test_only_rank_0_copies_the_full_ema_and_only_to_export_or_validate():
    from types import SimpleNamespace

    from torch import nn

    from vosr.runtime.ema import EMA
    from vosr.training.loop import _gather_ema, _validate

    module = nn.Linear(3, 2)
    engine = SimpleNamespace(module=module, ema=EMA(module, 0.9))
    cfg = SimpleNamespace(data=SimpleNamespace(val=None))
    assert set(_gather_ema(SimpleNamespace(engine=engine, info=SimpleNamespace(is_main=True)))) == {"weight", "bias"}
    assert _gather_ema(SimpleNamespace(engine=engine, info=SimpleNamespace(is_main=False))) == {}

    def no_gather(*args, **kwargs):
        raise AssertionError("gathered the EMA without data.val")

    engine.ema.full_state_dict = no_gather
    _validate(SimpleNamespace(cfg=cfg, engine=engine, info=SimpleNamespace(is_main=True)))  # log.val_every hit
