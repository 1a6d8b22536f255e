"""Throughput of the training stream: random HR crops per second, in total and per loader worker.

Packs real photographs into tar shards (the installed desktop wallpapers, else the scikit-image
photos), then times ``vosr.data.stream.build_train_stream`` after a warm-up (worker start and
shuffle-buffer fill). Image bytes are stored as found (JPEG/PNG), as ``data_tools/pack.py`` does.

    python benchmarks/stream_throughput.py --crop 512 --workers 0,1,2 --batches 40
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import tarfile
import tempfile
import time
from pathlib import Path

from data_tools.photos import WALLPAPER_DIRS, skimage_photos, wallpaper_files
from vosr.config.run import DataConfig, DataSource
from vosr.data.stream import build_train_stream

REPO = Path(__file__).resolve().parents[1]


def find_photos(dirs: tuple[str, ...] = WALLPAPER_DIRS) -> list[tuple[str, bytes]]:
    """(extension, encoded bytes) of the photos under ``dirs``, or PNGs of scikit-image's photos."""
    files = wallpaper_files(dirs)
    if files:
        return [(p.suffix.lower().lstrip("."), p.read_bytes()) for p in files]
    from PIL import Image

    photos = []
    for _, img in skimage_photos():
        buf = io.BytesIO()
        Image.fromarray(img[..., :3]).save(buf, format="PNG")
        photos.append(("png", buf.getvalue()))
    return photos


def pack(photos: list[tuple[str, bytes]], out: Path, per_shard: int) -> int:
    """Write ``photos`` as ``bench-%06d.tar`` shards (+ sizes.json); returns the number of shards."""
    sizes = {}
    for s in range(0, len(photos), per_shard):
        name = f"bench-{s // per_shard:06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for i, (ext, payload) in enumerate(photos[s:s + per_shard], start=s):
                for member, blob in ((f"{i:08d}.{ext}", payload), (f"{i:08d}.json", json.dumps({"i": i}).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        sizes[name] = len(photos[s:s + per_shard])
    (out / "sizes.json").write_text(json.dumps(sizes))
    return len(sizes)


def measure(shards: Path, crop: int, workers: int, batch: int, batches: int) -> tuple[float, float]:
    """(crops/s, seconds of warm-up) of one stream with ``workers`` loader workers."""
    cfg = DataConfig(train=[DataSource(shards=str(shards))], crop_size=crop, batch_size=batch,
                     num_workers=workers, shuffle_buffer=4 * batch)
    stream = build_train_stream(cfg, rank=0, world_size=1, seed=0)
    it = iter(stream)
    start = time.perf_counter()
    for _ in range(max(2, workers * 2)):  # every worker has started and filled its buffer
        next(it)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for batch_out in itertools.islice(it, batches):
        assert batch_out["hr"].shape[-1] == crop
    rate = batches * batch / (time.perf_counter() - start)
    stream.close()
    return rate, warm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=512, help="crop side (pixels)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated loader worker counts to time")
    parser.add_argument("--batch", type=int, default=8, help="crops per batch")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--per-shard", type=int, default=8, help="photos per shard")
    parser.add_argument("--photos", nargs="*", default=list(WALLPAPER_DIRS), help="folders of photos to pack")
    args = parser.parse_args(argv)
    photos = find_photos(tuple(args.photos))
    with tempfile.TemporaryDirectory() as tmp:
        n_shards = pack(photos, Path(tmp), args.per_shard)
        mb = sum(len(b) for _, b in photos) / 2**20
        print(f"{len(photos)} photos ({mb:.0f} MiB encoded) in {n_shards} shards; crop {args.crop}^2, "
              f"batch {args.batch}, {args.batches} timed batches")
        for workers in (int(w) for w in args.workers.split(",")):
            rate, warm = measure(Path(tmp), args.crop, workers, args.batch, args.batches)
            per_worker = rate / max(1, workers)
            print(f"num_workers={workers}: {rate:7.1f} crops/s total, {per_worker:7.1f} crops/s per worker "
                  f"(warm-up {warm:.1f} s)")


if __name__ == "__main__":
    main()
