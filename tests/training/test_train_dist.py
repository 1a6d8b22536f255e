"""Two CPU processes over gloo with a real DeepSpeed engine: ZeRO-2 and ZeRO-3, kill, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import REPO, TINY, read_metrics, tiny_overrides, torchrun, torchrun_cmd, torchrun_env
from vosr.runtime.checkpoint import complete_checkpoints

pytestmark = pytest.mark.dist


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_and_resume(photo_shards, tmp_path, stage):
    run_dir = tmp_path / f"zero{stage}"
    args = ["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, f"engine.zero_stage={stage}",
                                              "checkpoint.every_steps=2", "checkpoint.export_raw=true")]
    first = torchrun("vosr.train", [*args, "optim.max_steps=2"])
    assert first.returncode == 0, first.stderr[-4000:]
    ema_first = load_file(str(run_dir / "ema.safetensors"))
    second = torchrun("vosr.train", [*args, "optim.max_steps=4"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    ema = load_file(str(run_dir / "ema.safetensors"))
    assert set(ema) == set(ema_first)
    key = "blocks.0.attn.qkv.weight"
    assert ema[key].shape == ema_first[key].shape and ema[key].numel() > 0  # gathered, not a ZeRO-3 shard
    assert not torch.equal(ema[key], ema_first[key])
    raw = load_file(str(run_dir / "model.safetensors"))  # the raw weights, gathered too, and not the EMA
    assert set(raw) == set(ema) and raw[key].shape == ema[key].shape and not torch.equal(raw[key], ema[key])
    assert sorted(read_metrics(run_dir)) == [1, 2, 3, 4]


def test_killed_run_resumes_from_last_checkpoint(photo_shards, tmp_path):
    """SIGKILL both ranks a step or more after a checkpoint, then rerun: it resumes there, the data stream at its
    saved position, and redoes the lost steps with the very losses the killed run had logged for them."""
    run_dir = tmp_path / "killed"
    args = ["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, "engine.zero_stage=2",
                                              "checkpoint.every_steps=4", "optim.max_steps=400")]
    proc = subprocess.Popen(torchrun_cmd("vosr.train", args), cwd=REPO, env=torchrun_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # a checkpoint, and a step logged after it (the next save is 3 steps off)
            found = complete_checkpoints(run_dir / "checkpoints")
            if found and (run_dir / "metrics.jsonl").is_file() and \
                    max(read_metrics(run_dir), default=0) > int(found[-1].name.split("_")[1]):
                break
            time.sleep(0.2)
        assert complete_checkpoints(run_dir / "checkpoints"), "no checkpoint before the deadline"
    finally:
        # torchrun starts each rank in its own session, so kill the whole tree, ranks first (a node dying).
        ranks = psutil.Process(proc.pid).children(recursive=True)
        for p in ranks:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(ranks, timeout=30)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = int(complete_checkpoints(run_dir / "checkpoints")[-1].name.split("_")[1])
    lost = {step: m["loss/flow"] for step, m in read_metrics(run_dir).items() if saved < step <= saved + 2}
    assert lost, "the killed run logged no step after its newest checkpoint"
    resumed = torchrun("vosr.train", [*args[:-1], f"optim.max_steps={saved + 2}"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = (run_dir / "log.txt").read_text()
    assert f"at step {saved}" in log and "data stream at its saved position" in log
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, saved + 3))  # cut back to the checkpoint, then each step once
    redone = read_metrics(run_dir)
    for step, loss in lost.items():
        assert redone[step]["loss/flow"] == pytest.approx(loss, rel=1e-6, abs=1e-7), step
