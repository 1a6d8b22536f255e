"""The teacher run on CUDA: training, validation and resume through the real loop (GPU machines only).

The CPU tests cannot reach the device-placement paths this covers: the degradation draws on a
CPU generator while the batch lives on the GPU, and bf16 autocast around the frozen encoders.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.training.helpers import REPO, TINY, read_metrics, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_teacher_trains_validates_and_resumes_on_cuda(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cuda"}
    args = [sys.executable, "-m", "vosr.train", "--config", TINY,
            *tiny_overrides(photo_shards[0].parent, run_dir, "engine.precision=bf16", "checkpoint.every_steps=2",
                            "log.val_every=2", f"data.val={photo_shards[0].parent}", "data.val_size=2")]
    for steps in (2, 4):
        done = subprocess.run([*args, f"optim.max_steps={steps}"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
    log = (run_dir / "log.txt").read_text()
    assert "resumed from" in log, log[-2000:]
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss/flow"]) for m in metrics.values())
    assert any(k.startswith("val/") for k in metrics[4]), metrics[4]
