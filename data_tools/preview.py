"""Look at what training sees: stream crops from shards, degrade them, save a grid of pairs.

Each row: the LR image (nearest-neighbour enlarged so its pixels show) | the LR resized back
to HR size (what the model is conditioned on) | the HR crop. Crops come from the real training
stream (resampled shards, shuffle buffer, random crops and flips), degradations from the YAML.

    python data_tools/preview.py --shards runs/demo/shards --out runs/demo/pairs.png
    python data_tools/preview.py --shards 'shards/hq-{000000..000099}.tar' --degradation configs/degradation/light.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from vosr.config import DataConfig, DataSource, DegradationConfig, load
from vosr.data.degrade import RealESRGANDegradation
from vosr.data.stream import build_train_stream, to_unit
from vosr.images import make_grid

REPO = Path(__file__).resolve().parents[1]


def preview_pairs(shards: str, degradation: DegradationConfig, *, count: int = 6, crop: int = 256,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hr, lr, lr_up) for ``count`` training crops of ``shards`` degraded at ``seed``."""
    data = DataConfig(train=[DataSource(shards=shards)], crop_size=crop, scale=degradation.scale,
                      batch_size=count, num_workers=0, shuffle_buffer_mb=4 * count * 3 * crop**2 / 2**20)
    stream = build_train_stream(data, rank=0, world_size=1, seed=seed)
    hr = to_unit(next(iter(stream))["hr"])
    pair = RealESRGANDegradation(degradation)(hr, torch.Generator().manual_seed(seed))
    return hr, pair.lr, pair.lr_up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder, glob or brace pattern")
    p.add_argument("--out", default="pairs.png", help="grid image to write (default: pairs.png)")
    p.add_argument("--degradation", default=str(REPO / "configs/degradation/realesrgan.yaml"),
                   help="degradation YAML (default: configs/degradation/realesrgan.yaml)")
    p.add_argument("--count", type=int, default=6, help="pairs in the grid (default: 6)")
    p.add_argument("--crop", type=int, default=256, help="HR crop side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    degradation = load(DegradationConfig, args.degradation)
    hr, lr, lr_up = preview_pairs(args.shards, degradation, count=args.count, crop=args.crop, seed=args.seed)
    lr_big = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
    grid = make_grid([[lr_big[i], lr_up[i], hr[i]] for i in range(hr.shape[0])])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"{hr.shape[0]} degraded pairs (LR | LR upsampled | HR) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
