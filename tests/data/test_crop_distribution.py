"""Several crops per decode change nothing in a crop's distribution: positions and flips are the same with
data.crops_per_image 1 and 4, siblings are independent, and the shuffle buffer spreads them apart."""
from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats

from vosr.config.run import DataConfig, DataSource
from vosr.data.crops import CropSpec, draw_params
from vosr.data.stream import build_train_stream

WIDTH, HEIGHT, CROP = 120, 100, 32


def coordinate_shards(out: Path, images: int, per_shard: int) -> Path:
    """Images whose red channel is the column, green the row and blue the image index (lossless PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    for s in range(0, images, per_shard):
        with tarfile.open(out / f"c-{s // per_shard:06d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, images)):
                buf = io.BytesIO()
                Image.fromarray(np.dstack([xs, ys, np.full_like(xs, i)]).astype(np.uint8)).save(buf, format="PNG")
                for name, payload in ((f"{i:06d}.png", buf.getvalue()), (f"{i:06d}.json", json.dumps({}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return out


def read_crops(shards: Path, crops_per_image: int, batches: int, seed: int, buffer_mb: float = 0.3) -> np.ndarray:
    """(n, 5) int: x, y, flipped left-right, flipped up-down, image index of every streamed crop, in order."""
    cfg = DataConfig(train=[DataSource(shards=str(shards))], crop_size=CROP, scale=4, batch_size=50, num_workers=0,
                     crops_per_image=crops_per_image, shuffle_buffer_mb=buffer_mb)
    rows = []
    for batch in itertools.islice(iter(build_train_stream(cfg, rank=0, world_size=1, seed=seed)), batches):
        hr = batch["hr"].numpy().astype(int)  # (B, 3, S, S): channel 0 = column, 1 = row, 2 = image
        cols, rows_ = hr[:, 0, 0, :], hr[:, 1, :, 0]
        flip_lr, flip_ud = cols[:, 0] > cols[:, 1], rows_[:, 0] > rows_[:, 1]
        rows.append(np.stack([cols.min(1), rows_.min(1), flip_lr, flip_ud, hr[:, 2, 0, 0]], axis=1))
    return np.concatenate(rows)


def test_positions_and_flips_do_not_depend_on_crops_per_image(tmp_path: Path) -> None:
    shards = coordinate_shards(tmp_path / "c", images=24, per_shard=6)
    one, four = read_crops(shards, 1, 30, seed=1), read_crops(shards, 4, 30, seed=2)  # 1500 crops each
    for axis, side in ((0, WIDTH), (1, HEIGHT)):
        assert one[:, axis].min() == 0 and one[:, axis].max() == side - CROP  # the whole range is reached
        assert stats.ks_2samp(one[:, axis], four[:, axis]).pvalue > 1e-3, axis  # same position distribution
        assert stats.kstest(four[:, axis], stats.randint(0, side - CROP + 1).cdf).pvalue > 1e-3  # uniform
    for flip in (2, 3):
        assert abs(one[:, flip].mean() - 0.5) < 0.06 and abs(four[:, flip].mean() - 0.5) < 0.06  # fair coins
        table = [[c[:, flip].sum(), len(c) - c[:, flip].sum()] for c in (one, four)]
        assert stats.chi2_contingency(table).pvalue > 1e-3
    # Every image is drawn as often with 4 crops per decode as with 1.
    counts = np.bincount(four[:, 4], minlength=24)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sibling_crops_are_independent_and_spread() -> None:
    spec = CropSpec(size=CROP, per_image=4, flip=True)
    gen = torch.Generator().manual_seed(0)
    params = np.array([draw_params(WIDTH, HEIGHT, 4, spec, gen) for _ in range(800)], dtype=float)  # (800, 4, 4)
    for column in range(4):  # first vs second crop of the same decode: no correlation in x, y or the flips
        assert abs(stats.pearsonr(params[:, 0, column], params[:, 1, column]).statistic) < 0.12


def test_crops_of_one_image_leave_the_buffer_apart(tmp_path: Path) -> None:
    shards = coordinate_shards(tmp_path / "c", images=200, per_shard=50)
    crops = read_crops(shards, 4, 12, seed=3, buffer_mb=0.3)  # ~100-crop buffer, 600 crops
    images = crops[:, 4]
    assert np.mean(images[1:] == images[:-1]) < 0.05  # side by side they would be 75 % of neighbours
    gaps = [np.ptp(np.flatnonzero(images == i)) for i in np.unique(images) if np.sum(images == i) == 4]
    assert len(gaps) > 20 and np.median(gaps) > 30
