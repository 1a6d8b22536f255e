"""The teacher run end to end in one CPU process: real shards, real DeepSpeed, resume."""
from __future__ import annotations

import math

import pytest
from safetensors import safe_open

from tests.training.helpers import TINY, read_metrics, tiny_overrides
from vosr import train
from vosr.runtime.checkpoint import complete_checkpoints


def test_teacher_runs_checkpoints_and_exports(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    code = train.main(["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir,
                                                          "optim.max_steps=4", "checkpoint.every_steps=2")])
    assert code == 0
    names = [p.name for p in complete_checkpoints(run_dir / "checkpoints")]
    assert names == ["step_00000002", "step_00000004"]
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss/flow"]) for m in metrics.values())
    assert metrics[4]["perf/images_per_s"] > 0
    with safe_open(str(run_dir / "ema.safetensors"), "pt") as f:
        assert "vosr_config" in f.metadata()
        assert "blocks.0.attn.qkv.weight" in f.keys()
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_resume_continues_the_same_loss_curve(photo_shards, tmp_path):
    """Stop at step 3, resume to 6: steps 4-6 match an uninterrupted run bit for bit."""
    shards = photo_shards[0].parent
    extra = ("checkpoint.every_steps=3", "checkpoint.replay_data=true", "engine.zero_stage=1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(["--config", TINY, *tiny_overrides(shards, straight, "optim.max_steps=6", *extra)]) == 0
    assert train.main(["--config", TINY, *tiny_overrides(shards, split, "optim.max_steps=3", *extra)]) == 0
    assert train.main(["--config", TINY, *tiny_overrides(shards, split, "optim.max_steps=6", *extra)]) == 0
    a, b = read_metrics(straight), read_metrics(split)
    for step in (4, 5, 6):
        assert b[step]["loss/flow"] == pytest.approx(a[step]["loss/flow"], rel=1e-6, abs=1e-7), step
    assert "resumed from" in (split / "log.txt").read_text()


def test_bad_config_fails_before_work(tmp_path):
    from vosr.config import ConfigError

    with pytest.raises(ConfigError, match="optim.lrr"):
        train.main(["--config", TINY, "optim.lrr=1", "--debug"])
    assert not (tmp_path / "runs").exists()
