"""Faults injected on purpose into real tiny training runs: checkpoint payloads, two runs in one folder,
group SIGTERM, a kill during the final export, a truncated newest checkpoint, a full disk, a signal
during start-up. Each must end as issue 12 says: nothing lost, nothing run that should not be."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.helpers import REPO, TINY, read_metrics, tiny_overrides
from vosr import train
from vosr.runtime.checkpoint import MARKER, complete_checkpoints
from vosr.training.export import read_metadata
from vosr.training.guard import LOCK_NAME


class Payload:
    """Unpickling this creates ``marker``: proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", TINY, *tiny_overrides(shards, run_dir, "engine.zero_stage=1", "log.wandb_mode=disabled",
                                             "data.crops_per_image=1", *extra)]


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _popen(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vosr.train", *args], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended early ({proc.returncode}): {err[-3000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def _logged_step(run_dir: Path) -> int:
    return max(read_metrics(run_dir), default=0) if (run_dir / "metrics.jsonl").is_file() else 0


def _refresh_manifest(folder: Path) -> None:
    """Rewrite complete.json's sizes and checksums as a writer of a planted file would."""
    marker = json.loads((folder / MARKER).read_text())
    for name in marker["files"]:
        data = (folder / name).read_bytes()
        marker["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MARKER).write_text(json.dumps(marker))


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("zero", [1, 3])
def test_payload_in_any_checkpoint_file_does_not_run(photo_shards, tmp_path, capsys, zero):
    run_dir, marker = tmp_path / "run", tmp_path / "PWNED"
    shards = photo_shards[0].parent
    z = f"engine.zero_stage={zero}"
    assert train.main(_args(shards, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2", z)) == 0
    folder = complete_checkpoints(run_dir / "checkpoints")[-1]
    model_states = "mp_rank_00_model_states.pt" if zero < 3 else "zero_pp_rank_0_mp_rank_00_model_states.pt"
    kinds = ["rng_rank00000.pt", "ema_rank00000.pt", model_states, "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(kinds)
    capsys.readouterr()
    for name in kinds:
        path = folder / name
        original = path.read_bytes()
        state = torch.load(path, weights_only=False)  # our own file: trusted here
        state["planted"] = Payload(marker)
        torch.save(state, path)
        _refresh_manifest(folder)  # the checksum matches: only the weights-only load stands in the way
        code = train.main(_args(shards, run_dir, "optim.max_steps=3", "checkpoint.every_steps=2", z))
        err = capsys.readouterr().err
        assert code == 2, (name, err[-2000:])
        assert not marker.exists(), f"the payload in {name} ran"
        lines = _error_lines(err)
        assert len(lines) == 1 and str(path) in lines[0] and "not weights" in lines[0], (name, err[-2000:])
        path.write_bytes(original)
        _refresh_manifest(folder)
    assert train.main(_args(shards, run_dir, "optim.max_steps=3", "checkpoint.every_steps=2", z)) == 0


def test_second_run_in_a_live_run_folder_exits_2_naming_the_owner(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    shards = photo_shards[0].parent
    first = _popen(_args(shards, run_dir, "optim.max_steps=100000", "checkpoint.every_steps=100000"))
    try:
        _wait_for(lambda: _logged_step(run_dir) >= 1, first, timeout=180)
        second = subprocess.run([sys.executable, "-m", "vosr.train", *_args(shards, run_dir, "seed=1")], cwd=REPO,
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = _error_lines(second.stderr)
        assert len(lines) == 1 and f"pid {first.pid} on {socket.gethostname()}" in lines[0], second.stderr[-2000:]
        assert not complete_checkpoints(run_dir / "checkpoints")
        assert first.poll() is None, "the first run was disturbed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The first run died (kill -9): its lock is stale (dead pid on this host) and is taken over.
    assert (run_dir / LOCK_NAME).is_file()
    assert train.main(_args(shards, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2")) == 0
    assert not (run_dir / LOCK_NAME).exists()
    assert f"took over the lock {run_dir / LOCK_NAME} of a run that is gone (pid {first.pid}" in \
        (run_dir / "log.txt").read_text()


def test_lock_of_another_host_and_a_changed_config_are_refused(photo_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shards = photo_shards[0].parent
    assert train.main(_args(shards, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2")) == 0
    capsys.readouterr()
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": "gpu-node-17", "pid": 4242, "job_id": "991",
                                                 "started": time.time()}))
    assert train.main(_args(shards, run_dir, "optim.max_steps=3")) == 2
    line, = _error_lines(capsys.readouterr().err)
    assert "pid 4242 on gpu-node-17, job 991" in line and f"delete {run_dir / LOCK_NAME}" in line
    (run_dir / LOCK_NAME).unlink()
    assert train.main(_args(shards, run_dir, "optim.max_steps=3", "seed=7")) == 2
    line, = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: checkpoint.resume:") and "seed: 0 -> 7" in line
    assert "checkpoint.allow_config_change=true" in line
    assert train.main(_args(shards, run_dir, "optim.max_steps=3", "seed=7",
                            "checkpoint.allow_config_change=true")) == 0


def test_group_sigterm_saves_and_exits_75(photo_shards, tmp_path):
    """``scancel``'s SIGTERM reaches the whole process group, data-loader workers included."""
    run_dir = tmp_path / "run"
    proc = _popen(_args(photo_shards[0].parent, run_dir, "optim.max_steps=100000", "checkpoint.every_steps=100000",
                        "data.num_workers=2"))
    try:
        _wait_for(lambda: _logged_step(run_dir) >= 2, proc, timeout=180)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    saved = complete_checkpoints(run_dir / "checkpoints")
    assert saved and int(saved[-1].name.split("_")[1]) >= 2
    assert "received SIGTERM" in (run_dir / "log.txt").read_text()


def test_signal_during_start_up_exits_75(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = _popen(_args(photo_shards[0].parent, run_dir, "optim.max_steps=100000"))
    try:
        _wait_for(lambda: (run_dir / "log.txt").is_file(), proc, timeout=120)  # still building models
        os.kill(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    assert "during start-up" in (run_dir / "log.txt").read_text()
    assert not (run_dir / LOCK_NAME).exists()


def test_kill_during_final_export_is_repaired(photo_shards, tmp_path):
    """As left by a kill during the final export: the checkpoint of the last step is complete, the export still
    holds an earlier step and its temp file lies next to it. The rerun repairs both."""
    run_dir = tmp_path / "run"
    shards = photo_shards[0].parent
    assert train.main(_args(shards, run_dir, "optim.max_steps=2", "checkpoint.every_steps=1")) == 0
    early = (run_dir / "ema.safetensors").read_bytes()
    assert train.main(_args(shards, run_dir, "optim.max_steps=4", "checkpoint.every_steps=2")) == 0
    (run_dir / "ema.safetensors").write_bytes(early)
    tmp = run_dir / f".ema.safetensors.tmp-{99999}"
    tmp.write_bytes(early[: len(early) // 2])
    assert read_metadata(run_dir / "ema.safetensors")["step"] == "2"
    assert train.main(_args(shards, run_dir, "optim.max_steps=4", "checkpoint.every_steps=2")) == 0
    assert read_metadata(run_dir / "ema.safetensors")["step"] == "4"
    assert not tmp.exists()
    log = (run_dir / "log.txt").read_text()
    assert "does not hold step 4" in log and f"removed {tmp}" in log


def test_truncated_newest_checkpoint_falls_back(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    shards = photo_shards[0].parent
    assert train.main(_args(shards, run_dir, "optim.max_steps=4", "checkpoint.every_steps=2")) == 0
    newest = complete_checkpoints(run_dir / "checkpoints")[-1]
    bad = newest / "mp_rank_00_model_states.pt"
    bad.write_bytes(b"")  # as after a crash with no fsync: the name is there, the data is not
    assert train.main(_args(shards, run_dir, "optim.max_steps=5", "checkpoint.every_steps=2")) == 0
    log = (run_dir / "log.txt").read_text()
    assert f"{bad} has 0 bytes" in log and "falling back to the previous complete one" in log
    assert "resumed from" in log and "step_00000002 at step 2" in log
    assert sorted(read_metrics(run_dir)) == [1, 2, 3, 4, 5]
    assert (newest.parent / f"{newest.name}.damaged" / bad.name).stat().st_size == 0  # kept aside, not reused
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000004", "step_00000005"]


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_is_named_and_the_previous_checkpoint_stays_usable(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    shards = photo_shards[0].parent
    assert train.main(_args(shards, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2")) == 0
    sizes = sorted(p.stat().st_size for p in complete_checkpoints(run_dir / "checkpoints")[-1].glob("*.pt"))
    limit = sizes[-1] // 2  # the largest checkpoint file cannot be written; logs and small files can
    proc = subprocess.run([sys.executable, "-m", "vosr.train",
                           *_args(shards, run_dir, "optim.max_steps=4", "checkpoint.every_steps=2")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(limit))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line, = _error_lines(proc.stderr)
    assert line.startswith("error: no space left on device while writing ") and "step_00000004" in line, line
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000002"]
    assert not list((run_dir / "checkpoints" / ".tmp").glob("step_*"))  # the partial save is gone
    assert train.main(_args(shards, run_dir, "optim.max_steps=4", "checkpoint.every_steps=2")) == 0
    assert "step_00000002 at step 2" in (run_dir / "log.txt").read_text()


def test_source_of_only_empty_shards_fails_at_start_up(photo_shards, tmp_path, capsys):
    import tarfile

    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(2):
        tarfile.open(empty / f"e-{i:06d}.tar", "w").close()
    mix = f"data.train=[{{shards: '{photo_shards[0].parent}'}}, {{shards: '{empty}'}}]"
    code = train.main(_args(photo_shards[0].parent, tmp_path / "run", mix))
    line, = _error_lines(capsys.readouterr().err)
    assert code == 2 and f"data.train[1].shards='{empty}'" in line and "none of its 2 shards" in line, line
    assert not complete_checkpoints(tmp_path / "run" / "checkpoints")
