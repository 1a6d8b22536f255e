"""Streaming HR crops from real tar shards: shapes, small images, workers, mix weights, skips, seeding, validation."""
from __future__ import annotations

import io
import itertools
import json
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
from vosr.data.crops import CropSpec, cut, decode, sample_size
from vosr.data.mix import parse_mix_file, resolve_sources
from vosr.data.stream import build_train_stream, build_val_batches, build_val_stream, to_unit


def _cfg(*folders: Path, weights: tuple[float, ...] | None = None, **kw) -> DataConfig:
    weights = weights or (1.0,) * len(folders)
    base = dict(crop_size=64, scale=4, batch_size=4, num_workers=0, shuffle_buffer_mb=0.1, crops_per_image=1)
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


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_batches_are_uint8_with_keys(photo_shards: list[Path]) -> None:
    rng_before = torch.get_rng_state()
    stream = build_train_stream(_cfg(photo_shards[0].parent, crops_per_image=4), rank=0, world_size=1, seed=0)
    batches = _take(stream, 6)
    for batch in batches:
        assert batch["hr"].shape == (4, 3, 64, 64) and batch["hr"].dtype == torch.uint8
        assert batch["hr"].is_contiguous() and set(batch) == {"hr", "key"}
        assert all(k.startswith("hr-00000") and "/" in k for k in batch["key"])
    hr = to_unit(torch.cat([b["hr"] for b in batches]))
    assert hr.dtype == torch.float32 and 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
    assert float(hr.std()) > 0.05  # real photo content, not blank
    state = stream.state_dict()
    assert state["batches"] == 6 and state["restart"] == 0 and json.loads(json.dumps(state)) == state
    assert stream.skipped() == {"decode": 0, "read": 0, "small": 0}
    assert torch.equal(torch.get_rng_state(), rng_before)  # the stream never draws from the global RNG


def test_small_images_skipped_by_default_or_upscaled(tmp_path: Path) -> None:
    img = _tiny_images(1, 40, seed=1)[0][:20]  # 40 wide, 20 high
    files = {"png": _png(img)}
    upscale = CropSpec(size=32, small="upscale")
    assert sample_size(files, upscale) == (64, 32)
    (crop,) = cut(decode(files, upscale), [(16, 0, False, False)], 32)
    expected = np.asarray(Image.fromarray(img).resize((64, 32), Image.Resampling.BICUBIC))[:, 16:48]
    np.testing.assert_array_equal(crop, expected)
    write_shards(tmp_path / "mixed", _tiny_images(6, 24, seed=2) + _tiny_images(2, 64, seed=3), per_shard=4)
    stream = build_train_stream(_cfg(tmp_path / "mixed", crop_size=48), rank=0, world_size=1, seed=0)
    keys = _keys(_take(stream, 6))
    assert set(keys) == {"hr-000001/00000006", "hr-000001/00000007"}  # only the two large images
    assert stream.skipped() == {"decode": 0, "read": 0, "small": 6}  # distinct samples, each pass re-met
    assert {r["kind"] for r in stream.take_skips()} == {"small"}
    cfg = _cfg(tmp_path / "mixed", crop_size=48, small_images="upscale")
    assert _take(build_train_stream(cfg, rank=0, world_size=1, seed=0), 1)[0]["hr"].shape == (4, 3, 48, 48)


def test_partial_png_decode_gives_the_same_rows() -> None:
    img = _tiny_images(1, 96, seed=4)[0]
    top = decode({"png": _png(img)}, CropSpec(size=32), rows=40)
    assert top.size == (96, 40)
    np.testing.assert_array_equal(np.asarray(top), img[:40])


def test_two_workers_cover_all_shards(photo_shards: list[Path]) -> None:
    stream = build_train_stream(_cfg(photo_shards[0].parent, num_workers=2), rank=0, world_size=1, seed=0)
    batches = _take(stream, 16)
    stream.close()
    assert {k.split("/")[0] for k in _keys(batches)} == {p.stem for p in photo_shards}
    assert stream.state_dict()["batches"] == 16


def test_mix_weights_set_source_proportions(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", _tiny_images(20, 8, seed=3), per_shard=5, prefix="a")
    write_shards(tmp_path / "b", _tiny_images(20, 8, seed=4), per_shard=5, prefix="b")
    cfg = _cfg(tmp_path / "a", tmp_path / "b", weights=(3.0, 1.0), crop_size=8, batch_size=16)
    keys = _keys(_take(build_train_stream(cfg, rank=0, world_size=1, seed=5), 40))  # 640 samples
    share_a = sum(k.startswith("a-") for k in keys) / len(keys)
    assert abs(share_a - 0.75) < 0.06, share_a  # 3.5 binomial standard deviations


def test_bad_samples_are_skipped_and_named_once(tmp_path: Path, photo_shards: list[Path]) -> None:
    data = tmp_path / "mixed"
    shutil.copytree(photo_shards[0].parent, data)
    with tarfile.open(data / "hr-000004.tar", "w") as tar:  # one garbage image, one good one
        _add_sample(tar, "bad.png", b"this is not a png" * 20)
        _add_sample(tar, "bad.json", b"{}")
        _add_sample(tar, "good.png", _png(_tiny_images(1, 80, seed=6)[0]))
    raw = (data / "hr-000001.tar").read_bytes()
    (data / "hr-000001.tar").write_bytes(raw[: len(raw) // 2])  # truncated mid-shard
    stream = build_train_stream(_cfg(data, num_workers=2), rank=0, world_size=1, seed=0)
    keys = _keys(_take(stream, 40))  # 160 crops of 18 usable samples: several passes over every shard
    assert "hr-000004/good" in keys and "hr-000004/bad" not in keys
    assert stream.skipped() == {"decode": 1, "read": 1, "small": 0}  # distinct, over both worker processes
    records = {(Path(r["shard"]).name, r["kind"]): r for r in stream.take_skips()}
    assert set(records) == {("hr-000004.tar", "decode"), ("hr-000001.tar", "read")}
    assert records["hr-000004.tar", "decode"]["key"] == "bad" and records["hr-000004.tar", "decode"]["reason"]
    assert stream.take_skips() == []


def test_source_without_usable_samples_fails_at_build(tmp_path: Path, photo_shards: list[Path]) -> None:
    (tmp_path / "broken").mkdir()
    for i in range(2):
        with tarfile.open(tmp_path / "broken" / f"x-{i:06d}.tar", "w") as tar:
            _add_sample(tar, "a.png", b"not an image")
    with pytest.raises(ValueError, match=r"^data.train\[1\].shards=.*broken.*none of its 2 shards") as err:
        build_train_stream(_cfg(photo_shards[0].parent, tmp_path / "broken"), rank=0, world_size=1, seed=0)
    assert "\n" not in str(err.value)


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
    assert [len(b["key"]) for b in batches] == [3, 3, 1] and batches[0]["hr"].dtype == torch.float32
    assert _keys(batches) == [f"hr-000000/{i:08d}" for i in range(5)] + [f"hr-000001/{i:08d}" for i in (5, 6)]
    again = build_val_batches(cfg, batch_size=3)
    assert all(torch.equal(a["hr"], b["hr"]) for a, b in zip(batches, again, strict=True))
    assert build_val_batches(_cfg(photo_shards[0].parent)) == []


def test_val_stream_splits_without_duplicates(photo_shards: list[Path]) -> None:
    cfg = _cfg(photo_shards[0].parent, val=str(photo_shards[0].parent), num_workers=0)
    batches = [b for r in (0, 1) for b in build_val_stream(cfg, rank=r, world_size=2)]
    keys = _keys(batches)
    assert len(keys) == len(set(keys)) == 20 and batches[0]["hr"].dtype == torch.uint8


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


@pytest.mark.parametrize("key, value", [("crops_per_image", 0), ("shuffle_buffer_mb", 0), ("crop_size", 0)])
def test_bad_data_settings_name_the_key(key: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"data.{key}"):
        DataConfig(**{key: value})
