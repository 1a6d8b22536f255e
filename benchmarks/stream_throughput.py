"""CPU cost of the training stream: 512^2 crops per CPU-second of one loader worker, against a floor.

Packs the installed wallpapers (scikit-image photos as a fallback) with data_tools/pack.py twice, as whole
images (``--format keep``) and as ``--tile 768`` tiles, then streams crops from each with
``vosr.data.stream.build_train_stream`` at each ``data.crops_per_image`` asked for. Rates are crops per
CPU-second (this process and its live loader workers, through psutil), measured after the shuffle buffer is
full (the workers' prefetch is as far ahead at the end of the window as at its start), so a busy machine
slows them far less than a wall clock would. The floor, measured
in the same run, is decoding every pre-cut tile once (the stream's own decoder, nothing else); the ratio
stream / floor says what a crop costs beyond one tile decode. "cores per node" is what 8 GPUs eating N
samples/s each need at that rate.

    python benchmarks/stream_throughput.py                          # crops_per_image 1 and 4, in-process
    python benchmarks/stream_throughput.py --crops-per-image 4 --workers 2 --gpu-rate 80
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import psutil

from data_tools.photos import skimage_photos, wallpaper_files
from vosr.config.run import DataConfig, DataSource
from vosr.data.crops import CropSpec, decode
from vosr.data.shardio import iter_shard
from vosr.data.stream import buffer_crops, build_train_stream


def cpu_seconds() -> float:
    """User + system CPU time of this process and its live children (the loader workers)."""
    me = psutil.Process()
    return sum(p.cpu_times().user + p.cpu_times().system for p in (me, *me.children(recursive=True)))


def photo_files(folder: Path) -> list[Path]:
    """The wallpapers, or scikit-image's photos written as PNG files."""
    files = wallpaper_files()
    if files:
        return files
    from PIL import Image

    for name, photo in skimage_photos():
        Image.fromarray(photo).save(folder / f"{name}.png")
    return sorted(folder.glob("*.png"))


def pack(files: list[Path], out: Path, tile: int) -> None:
    from data_tools.pack import main as pack_main

    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(map(str, files)) + "\n")
    pack_main([str(listing), "--out", str(out), "--max-samples", "64", "--no-progress",
               *(["--tile", str(tile)] if tile else [])])


def floor_rate(shards: Path, crop: int) -> tuple[float, int]:
    """(tiles decoded per CPU-second, tiles): one decode of every sample, nothing else."""
    samples = [s.files for shard in sorted(shards.glob("*.tar")) for s in iter_shard(str(shard))]
    spec = CropSpec(size=crop, small="upscale")
    start = cpu_seconds()
    for files in samples:
        decode(files, spec)
    return len(samples) / (cpu_seconds() - start), len(samples)


def stream_rate(shards: Path, args: argparse.Namespace, crops_per_image: int) -> float:
    """Crops per CPU-second of a stream, once its shuffle buffer is full (workers' CPU time included)."""
    cfg = DataConfig(train=[DataSource(shards=str(shards))], crop_size=args.crop, batch_size=args.batch,
                     num_workers=args.workers, crops_per_image=crops_per_image, shuffle_buffer_mb=args.buffer_mb)
    stream = build_train_stream(cfg, rank=0, world_size=1, seed=0)
    it = iter(stream)
    warm = 2 * -(-buffer_crops(cfg) // args.batch) * max(1, args.workers)  # every worker's buffer full
    for _ in range(warm):
        next(it)
    start = cpu_seconds()
    crops = sum(len(b["key"]) for b in itertools.islice(it, args.batches))
    rate = crops / (cpu_seconds() - start)
    stream.close()
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--crop", type=int, default=512, help="crop side (pixels)")
    parser.add_argument("--tile", type=int, default=768, help="pack.py --tile for the tile shards")
    parser.add_argument("--crops-per-image", default="1,4", help="comma-separated data.crops_per_image to time")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (0: in this process)")
    parser.add_argument("--batch", type=int, default=8, help="crops per batch")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--buffer-mb", type=float, default=64.0, help="data.shuffle_buffer_mb (rates do not "
                                                                      "depend on it; warm-up does)")
    parser.add_argument("--gpu-rate", type=float, default=80.0, help="samples/s one GPU eats (0.5B teacher on "
                                                                     "an H100: ~80)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = photo_files(Path(tmp))
        sets = {"whole images": Path(tmp) / "whole", f"--tile {args.tile}": Path(tmp) / "tiles"}
        for out, tile in zip(sets.values(), (0, args.tile), strict=True):
            pack(files, out, tile)
        floor, tiles = floor_rate(sets[f"--tile {args.tile}"], args.crop)
        print(f"{len(files)} photos; {args.crop}^2 crops, batch {args.batch}, {args.batches} timed batches, "
              f"data.num_workers={args.workers}")
        print(f"floor: decode of a pre-cut {args.tile}-px tile: {floor:.1f} tiles/CPU-s ({tiles} tiles)")
        for label, out in sets.items():
            for k in (int(k) for k in args.crops_per_image.split(",")):
                rate = stream_rate(out, args, k)
                print(f"{label:13s} crops_per_image={k}: {rate:6.1f} crops/CPU-s per worker = {rate / floor:4.2f}x "
                      f"the floor; cores per node for 8 GPUs at {args.gpu_rate:g} samples/s: "
                      f"{8 * args.gpu_rate / rate:5.1f}")


if __name__ == "__main__":
    main()
