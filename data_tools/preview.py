"""Look at what training sees: stream crops from shards, degrade them, save a labelled grid of pairs.

Each row: the LR image (nearest-neighbour enlarged so its pixels show) | the LR resized back
to HR size (what the model is conditioned on) | the HR crop. Crops come from the real training
stream (resampled shards, shuffle buffer, random crops and flips), degradations from the YAML;
flat crops (blank, sky, walls) are skipped so every row shows what the degradation does.

    python data_tools/preview.py --shards runs/demo/shards --out runs/demo/pairs.png
    python data_tools/preview.py --shards 'shards/hq-{000000..000099}.tar' --degradation configs/degradation/light.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = 8
"""Draw up to this many times ``--count`` crops to find ones with content."""


def preview_pairs(shards: str, degradation, *, count: int = 6, crop: int = 256, seed: int = 0):
    """(hr, lr, lr_up) for ``count`` training crops of ``shards`` with content, degraded at ``seed``."""
    import torch

    from vosr.config import DataConfig, DataSource
    from vosr.data.degrade import RealESRGANDegradation
    from vosr.data.stream import build_train_stream, to_unit
    from vosr.images import pick_with_content

    data = DataConfig(train=[DataSource(shards=shards)], crop_size=crop, scale=degradation.scale,
                      batch_size=CANDIDATES * count, num_workers=0,
                      shuffle_buffer_mb=4 * CANDIDATES * count * 3 * crop**2 / 2**20)
    stream = build_train_stream(data, rank=0, world_size=1, seed=seed)
    candidates = to_unit(next(iter(stream))["hr"])
    hr = candidates[pick_with_content(candidates, count, degradation.scale)]
    pair = RealESRGANDegradation(degradation)(hr, torch.Generator().manual_seed(seed))
    return hr, pair.lr, pair.lr_up


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python data_tools/preview.py", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder, glob or brace pattern")
    p.add_argument("--out", default="pairs.png", help="grid image to write (default: pairs.png)")
    p.add_argument("--degradation", default=str(REPO / "configs/degradation/realesrgan.yaml"),
                   help="degradation YAML (default: configs/degradation/realesrgan.yaml)")
    p.add_argument("--count", type=int, default=6, help="pairs in the grid (default: 6)")
    p.add_argument("--crop", type=int, default=256, help="HR crop side in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream and the degradation (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch.nn.functional as F
    from PIL import Image

    from vosr.config import DegradationConfig, load
    from vosr.images import make_grid

    try:
        degradation = load(DegradationConfig, args.degradation)
        hr, lr, lr_up = preview_pairs(args.shards, degradation, count=args.count, crop=args.crop, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lr_big = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
    scale = degradation.scale
    grid = make_grid([[lr_big[i], lr_up[i], hr[i]] for i in range(hr.shape[0])], min_panel=192,
                     labels=[f"LR (nearest x{scale})", "LR upsampled", "HR"],
                     title=f"training pairs: {Path(args.degradation).stem} degradation, x{scale}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"{hr.shape[0]} degraded pairs (LR | LR upsampled | HR) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
