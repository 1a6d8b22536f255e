"""Exact resume of the training stream: a saved position gives the very batches an uninterrupted stream gives."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_shards
from vosr.config.run import DataConfig, DataSource


def _cfg(photo_shards: list[Path], tmp_path: Path, **kw) -> DataConfig:
    rng = np.random.default_rng(11)
    other = write_shards(tmp_path / "other", [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(6)],
                         per_shard=2, prefix="o")
    base = dict(crop_size=64, scale=4, batch_size=4, num_workers=2, crops_per_image=4, shuffle_buffer_mb=0.2)
    base.update(kw)
    return DataConfig(train=[DataSource(shards=str(photo_shards[0].parent), weight=2.0),
                             DataSource(shards=str(other[0].parent))], **base)


def _take(stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return [x["key"] for x in a] == [y["key"] for y in b] and all(
        torch.equal(x["hr"], y["hr"]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_saved_position_resumes_exactly(photo_shards: list[Path], tmp_path: Path, workers: int) -> None:
    from vosr.data.stream import build_train_stream

    cfg = _cfg(photo_shards, tmp_path, num_workers=workers)
    straight = _take(build_train_stream(cfg, rank=1, world_size=2, seed=3), 9)
    first = build_train_stream(cfg, rank=1, world_size=2, seed=3)
    assert _same(_take(first, 3), straight[:3])
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores: plain json
    first.close()
    assert state["next_slot"] == (3 % workers if workers else 0) and state["batches"] == 3
    assert all(len(s["buffer"]) > 0 for s in state["slots"].values())  # crops waiting in the buffers
    resumed = build_train_stream(cfg, rank=1, world_size=2, seed=3)
    assert resumed.load_state_dict(state)
    assert _same(_take(resumed, 6), straight[3:9])
    assert resumed.state_dict()["batches"] == 9


def test_close_then_iterate_goes_on(photo_shards: list[Path], tmp_path: Path) -> None:
    from vosr.data.stream import build_train_stream

    cfg = _cfg(photo_shards, tmp_path)
    straight = _take(build_train_stream(cfg, rank=0, world_size=1, seed=0), 7)
    stream = build_train_stream(cfg, rank=0, world_size=1, seed=0)
    first = _take(stream, 3)
    stream.close()
    assert _same(first + _take(stream, 4), straight)


def test_position_for_other_settings_is_refused(photo_shards: list[Path], tmp_path: Path) -> None:
    from vosr.data.stream import build_train_stream

    cfg = _cfg(photo_shards, tmp_path, num_workers=0)
    stream = build_train_stream(cfg, rank=0, world_size=1, seed=0)
    _take(stream, 2)
    state = stream.state_dict()
    for other_cfg, seed, world in ((_cfg(photo_shards, tmp_path, num_workers=0, crops_per_image=2), 0, 1),
                                   (cfg, 1, 1), (cfg, 0, 2)):
        other = build_train_stream(other_cfg, rank=0, world_size=world, seed=seed)
        assert not other.load_state_dict(state) and other.state_dict()["batches"] == 0
    with pytest.raises(RuntimeError, match="before the first batch"):
        stream.load_state_dict(state)
