"""Throughput of data_tools/pack.py on the installed desktop wallpapers (skimage photos as a fallback).

    python benchmarks/pack_throughput.py                      # workers 1 and 2, --format keep
    python benchmarks/pack_throughput.py --format png --workers 1 2 4 --limit 40

Prints images/s and MB/s (input bytes read per second) for each worker count.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from data_tools.photos import skimage_photos, wallpaper_files

REPO = Path(__file__).resolve().parents[1]


def skimage_files(folder: Path) -> list[Path]:
    """Fallback inputs: scikit-image's real photos written as PNG files."""
    from PIL import Image

    paths = []
    for name, photo in skimage_photos():
        paths.append(folder / f"{name}.png")
        Image.fromarray(photo).save(paths[-1])
    return paths


def run_once(pack_main, listing: Path, out: Path, workers: int, fmt: str) -> tuple[float, dict]:
    """Pack the listed images once; returns (seconds, manifest)."""
    start = time.perf_counter()
    pack_main([str(listing), "--out", str(out), "--workers", str(workers), "--format", fmt, "--no-progress"])
    return time.perf_counter() - start, json.loads((out / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> None:
    """Benchmark entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--format", default="keep", choices=("keep", "png", "jpg", "webp"))
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    args = parser.parse_args(argv)
    from data_tools.pack import main as pack_main

    with tempfile.TemporaryDirectory() as tmp:
        images = wallpaper_files()[: args.limit] or skimage_files(Path(tmp))
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(map(str, images)) + "\n")
        in_mb = sum(p.stat().st_size for p in images) / 1e6
        print(f"{len(images)} images, {in_mb:.1f} MB input, --format {args.format}")
        for workers in args.workers:
            seconds, m = run_once(pack_main, listing, Path(tmp) / f"out{workers}", workers, args.format)
            print(f"workers={workers}: {seconds:.2f} s  {len(images) / seconds:.2f} images/s  "
                  f"{in_mb / seconds:.1f} MB/s in  {m['total_bytes'] / 1e6 / seconds:.1f} MB/s out  "
                  f"({m['samples']} samples, {m['total_pixels'] / 1e6:.0f} MPix, {m['skipped_count']} skipped, "
                  f"{m['duplicates_count']} duplicates)")


if __name__ == "__main__":
    main()
