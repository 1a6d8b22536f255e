"""The teacher run end to end in one CPU process: real shards, real DeepSpeed, resume."""
from __future__ import annotations

import io
import json
import math
import shutil
import tarfile

import pytest
from safetensors import safe_open

from tests.training.helpers import TINY, read_metrics, tiny_overrides
from vosr import train
from vosr.runtime.checkpoint import complete_checkpoints


def _with_bad_samples(shards, folder):
    """A copy of the shards in which every shard starts with a sample whose image does not decode."""
    folder.mkdir()
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(folder / shard.name, "w") as out, tarfile.open(shard) as src:
            for name, payload in ((f"bad{shard.stem[-1]}.png", b"not a png" * 9), (f"bad{shard.stem[-1]}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                out.addfile(info, io.BytesIO(payload))
            for member in src:
                out.addfile(member, src.extractfile(member))
    return folder


def test_teacher_runs_checkpoints_and_exports(photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    shards = _with_bad_samples(photo_shards[0].parent, tmp_path / "bad_shards")
    code = train.main(["--config", TINY, *tiny_overrides(shards, run_dir, "optim.max_steps=4",
                                                          "checkpoint.every_steps=2", "data.crops_per_image=1")])
    assert code == 0
    names = [p.name for p in complete_checkpoints(run_dir / "checkpoints")]
    assert names == ["step_00000002", "step_00000004"]
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss/flow"]) for m in metrics.values())
    assert metrics[4]["perf/images_per_s"] > 0
    skipped = [json.loads(line) for line in (run_dir / "skipped.jsonl").read_text().splitlines()]
    assert skipped and len({(r["shard"], r["key"]) for r in skipped}) == len(skipped)  # each named once
    assert all(r["kind"] == "decode" and r["key"].startswith("bad") and r["reason"] for r in skipped)
    assert metrics[4]["data/skipped_decode"] == len(skipped)  # distinct samples
    with safe_open(str(run_dir / "ema.safetensors"), "pt") as f:
        assert "vosr_config" in f.metadata()
        assert "blocks.0.attn.qkv.weight" in f.keys()
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_resume_continues_the_same_loss_curve(photo_shards, tmp_path):
    """Killed after step 5 with the newest checkpoint at 3: the rerun resumes the data stream at its saved
    position (two loader workers, nothing replayed), steps 4-6 match an uninterrupted run bit for bit, and
    metrics.jsonl holds each step once."""
    shards = photo_shards[0].parent
    extra = ("checkpoint.every_steps=3", "engine.zero_stage=1", "data.num_workers=2")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(["--config", TINY, *tiny_overrides(shards, straight, "optim.max_steps=6", *extra)]) == 0
    assert train.main(["--config", TINY, *tiny_overrides(shards, split, "optim.max_steps=5", *extra)]) == 0
    shutil.rmtree(split / "checkpoints" / "step_00000005")  # as if killed after logging step 5, before its save
    assert train.main(["--config", TINY, *tiny_overrides(shards, split, "optim.max_steps=6", *extra)]) == 0
    a, b = read_metrics(straight), read_metrics(split)
    for step in (4, 5, 6):
        assert b[step]["loss/flow"] == pytest.approx(a[step]["loss/flow"], rel=1e-6, abs=1e-7), step
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    log = (split / "log.txt").read_text()
    assert "resumed from" in log and "data stream at its saved position" in log


def test_bad_config_fails_before_work(tmp_path):
    from vosr.config import ConfigError

    with pytest.raises(ConfigError, match="optim.lrr"):
        train.main(["--config", TINY, "optim.lrr=1", "--debug"])
    assert not (tmp_path / "runs").exists()
