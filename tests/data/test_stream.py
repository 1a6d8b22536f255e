"""Streaming HR crops from real tar shards: shapes, upscaling, workers, mix weights, skips, seeding, validation."""
from __future__ import annotations

import io
import itertools
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_shards
from vosr.config.run import DataConfig, DataSource
from vosr.data.mix import parse_mix_file, resolve_sources
from vosr.data.stream import build_train_stream, build_val_batches, build_val_stream, crop_hr


def _cfg(*folders: Path, weights: tuple[float, ...] | None = None, **kw) -> DataConfig:
    weights = weights or (1.0,) * len(folders)
    base = dict(crop_size=64, scale=4, batch_size=4, num_workers=0, shuffle_buffer=8)
    base.update(kw)
    return DataConfig(train=[DataSource(shards=str(f), weight=w) for f, w in zip(folders, weights, strict=True)],
                      **base)


def _take(stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def _keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


def _tiny_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _add_sample(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_batches_have_shape_range_and_keys(photo_shards: list[Path]) -> None:
    rng_before = torch.get_rng_state()
    stream = build_train_stream(_cfg(photo_shards[0].parent), rank=0, world_size=1, seed=0)
    batches = _take(stream, 6)
    for batch in batches:
        assert batch["hr"].shape == (4, 3, 64, 64) and batch["hr"].dtype == torch.float32
        assert batch["hr"].is_contiguous()
        assert 0.0 <= float(batch["hr"].min()) and float(batch["hr"].max()) <= 1.0
        assert all(k.startswith("hr-00000") and "/" in k for k in batch["key"])
    assert float(torch.cat([b["hr"] for b in batches]).std()) > 0.05  # real photo content, not blank
    state = stream.state_dict()
    assert state == {"seed": 0, "restart": 0, "batches": 6} and all(type(v) is int for v in state.values())
    assert stream.skipped() == {"decode": 0, "read": 0}
    assert torch.equal(torch.get_rng_state(), rng_before)  # the stream never draws from the global RNG


def test_small_images_are_upscaled_bicubic(tmp_path: Path) -> None:
    img = Image.fromarray(_tiny_images(1, 40, seed=1)[0][:20])  # 40 wide, 20 high
    crop = crop_hr(img, 32)  # centre crop of the bicubic upscale to 64 x 32
    expected = np.asarray(img.resize((64, 32), Image.Resampling.BICUBIC))[:, 16:48]
    np.testing.assert_array_equal(crop, expected)
    write_shards(tmp_path / "small", _tiny_images(6, 24, seed=2), per_shard=3)
    batch = _take(build_train_stream(_cfg(tmp_path / "small", crop_size=48), rank=0, world_size=1, seed=0), 1)[0]
    assert batch["hr"].shape == (4, 3, 48, 48)


def test_two_workers_cover_all_shards(photo_shards: list[Path]) -> None:
    stream = build_train_stream(_cfg(photo_shards[0].parent, num_workers=2), rank=0, world_size=1, seed=0)
    batches = _take(stream, 16)
    stream.close()
    assert {k.split("/")[0] for k in _keys(batches)} == {p.stem for p in photo_shards}
    assert stream.state_dict()["batches"] == 16


def test_mix_weights_set_source_proportions(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", _tiny_images(20, 8, seed=3), per_shard=5, prefix="a")
    write_shards(tmp_path / "b", _tiny_images(20, 8, seed=4), per_shard=5, prefix="b")
    cfg = _cfg(tmp_path / "a", tmp_path / "b", weights=(3.0, 1.0), crop_size=8, batch_size=16, shuffle_buffer=32)
    keys = _keys(_take(build_train_stream(cfg, rank=0, world_size=1, seed=5), 40))  # 640 samples
    share_a = sum(k.startswith("a-") for k in keys) / len(keys)
    assert abs(share_a - 0.75) < 0.06, share_a  # 3.5 binomial standard deviations


def test_corrupt_sample_and_truncated_shard_are_skipped(tmp_path: Path, photo_shards: list[Path]) -> None:
    data = tmp_path / "mixed"
    shutil.copytree(photo_shards[0].parent, data)
    with tarfile.open(data / "hr-000004.tar", "w") as tar:  # one garbage image, one good one
        _add_sample(tar, "bad.png", b"this is not a png" * 20)
        _add_sample(tar, "bad.json", b"{}")
        good = io.BytesIO()
        Image.fromarray(_tiny_images(1, 80, seed=6)[0]).save(good, format="PNG")
        _add_sample(tar, "good.png", good.getvalue())
    raw = (data / "hr-000001.tar").read_bytes()
    (data / "hr-000001.tar").write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    stream = build_train_stream(_cfg(data, num_workers=2), rank=0, world_size=1, seed=0)
    keys = _keys(_take(stream, 40))  # goes on past both
    assert "hr-000004/good" in keys and "hr-000004/bad" not in keys
    skipped = stream.skipped()  # summed over the two worker processes
    assert skipped["decode"] >= 1 and skipped["read"] >= 1, skipped


def test_ranks_read_disjoint_shards(photo_shards: list[Path]) -> None:
    cfg = _cfg(photo_shards[0].parent)
    keys = [set(_keys(_take(build_train_stream(cfg, rank=r, world_size=2, seed=0), 8))) for r in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]


def test_seed_rank_restart_determine_the_stream(photo_shards: list[Path]) -> None:
    cfg = _cfg(photo_shards[0].parent)

    def run(restart: int) -> list[dict]:
        return _take(build_train_stream(cfg, rank=0, world_size=1, seed=7, restart=restart), 5)

    first, again, requeued = run(0), run(0), run(1)
    assert _keys(first) == _keys(again)
    assert all(torch.equal(a["hr"], b["hr"]) for a, b in zip(first, again, strict=True))
    assert _keys(first) != _keys(requeued)


def test_val_batches_are_fixed_centre_crops(photo_shards: list[Path]) -> None:
    cfg = _cfg(photo_shards[0].parent, val=str(photo_shards[0].parent), val_size=7)
    batches = build_val_batches(cfg, batch_size=3)
    assert [len(b["key"]) for b in batches] == [3, 3, 1]
    assert _keys(batches) == [f"hr-000000/{i:08d}" for i in range(5)] + [f"hr-000001/{i:08d}" for i in (5, 6)]
    again = build_val_batches(cfg, batch_size=3)
    assert all(torch.equal(a["hr"], b["hr"]) for a, b in zip(batches, again, strict=True))
    assert build_val_batches(_cfg(photo_shards[0].parent)) == []


def test_val_stream_splits_without_duplicates(photo_shards: list[Path]) -> None:
    cfg = _cfg(photo_shards[0].parent, val=str(photo_shards[0].parent), num_workers=0)
    keys = [k for r in (0, 1) for b in build_val_stream(cfg, rank=r, world_size=2) for k in b["key"]]
    assert len(keys) == len(set(keys)) == 20


def test_fewer_shards_than_slots(photo_shards: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(photo_shards[0].parent, val=str(photo_shards[0].parent), num_workers=2)  # 4 shards < 3 x 2
    with pytest.raises(ValueError, match="data.num_workers"):
        build_val_stream(cfg, rank=0, world_size=3)
    with caplog.at_level(logging.WARNING):
        build_train_stream(cfg, rank=0, world_size=3, seed=0)  # resampled: a warning only
    assert "data.num_workers" in caplog.text


def test_mix_file_and_sources(tmp_path: Path) -> None:
    a = write_shards(tmp_path / "a", _tiny_images(6, 8, seed=8), per_shard=2, prefix="a")
    b = write_shards(tmp_path / "b", _tiny_images(4, 8, seed=9), per_shard=2, prefix="b")
    mix = tmp_path / "mix.txt"
    mix.write_text(f"# dataset mix\n\na, 2.5\n{tmp_path}/b/b-{{000000..000001}}.tar , 0.5  # brace pattern\n")
    assert parse_mix_file(str(mix)) == [(str(tmp_path / "a"), 2.5), (f"{tmp_path}/b/b-{{000000..000001}}.tar", 0.5)]
    cfg = DataConfig(train=[DataSource(shards=str(tmp_path / "a" / "a-*.tar"), weight=1.0)], mix_file=str(mix))
    assert resolve_sources(cfg) == [([str(p) for p in a], 1.0), ([str(p) for p in a], 2.5),
                                    ([str(p) for p in b], 0.5)]
    mix.write_text("a 2.5\n")
    with pytest.raises(ValueError, match="data.mix_file .* line 1"):
        resolve_sources(cfg)
    with pytest.raises(FileNotFoundError, match="data.mix_file"):
        resolve_sources(DataConfig(mix_file=str(tmp_path / "missing.txt")))
    with pytest.raises(FileNotFoundError, match=r"data.train\[0\].shards"):
        resolve_sources(DataConfig(train=[DataSource(shards=str(tmp_path / "nothing-*.tar"))]))
    with pytest.raises(ValueError, match="data.train"):
        resolve_sources(DataConfig())
