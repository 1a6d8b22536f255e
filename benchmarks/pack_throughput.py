"""CPU cost of data_tools/pack.py on the installed wallpapers (scikit-image photos as a fallback), against a floor.

    python benchmarks/pack_throughput.py                          # --format keep, all inputs and RGB inputs
    python benchmarks/pack_throughput.py --tile 768 --repeat 1
    python benchmarks/pack_throughput.py --format png --workers 2

Rates are images per CPU-second (this process and its children: ``resource.getrusage``), so a busy machine
slows them far less than a wall clock would. The floor, measured in the same run on the same files, is
reading each file and writing its bytes into a tar; the ratio floor / pack says how far pack is from I/O
speed. "RGB inputs" are the plain 8-bit RGB files (whose bytes keep mode stores untouched). Each figure is the
median of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import io
import resource
import statistics
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from data_tools.photos import skimage_photos, wallpaper_files
from data_tools.probe import open_lazy, probe


def skimage_files(folder: Path) -> list[Path]:
    """Fallback inputs: scikit-image's real photos written as PNG files."""
    from PIL import Image

    paths = []
    for name, photo in skimage_photos():
        paths.append(folder / f"{name}.png")
        Image.fromarray(photo).save(paths[-1])
    return paths


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_of(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = cpu_seconds()
        fn()
        times.append(cpu_seconds() - start)
    return statistics.median(times)


def floor_run(images: list[Path], out: Path) -> None:
    """The floor: read every file and write its bytes into one tar."""
    with tarfile.open(out, "w") as tar:
        for i, path in enumerate(images):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{i:09d}{path.suffix.lower()}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def pack_run(pack_main: Callable, listing: Path, out: Path, args: argparse.Namespace) -> None:
    """One pack.py run into a fresh folder."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    extra = ["--tile", str(args.tile)] if args.tile else []
    pack_main([str(listing), "--out", str(out), "--workers", str(args.workers), "--format", args.format,
               "--no-progress", *extra])


def is_rgb(path: Path) -> bool:
    raw = path.read_bytes()
    return probe(raw, open_lazy(raw)).plain_rgb


def main(argv: list[str] | None = None) -> None:
    """Benchmark entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="pack.py --workers (default 1: in this process)")
    parser.add_argument("--format", default="keep", choices=("keep", "png", "jpg", "webp"))
    parser.add_argument("--tile", type=int, default=0, help="pack.py --tile (default 0: whole images)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed")
    args = parser.parse_args(argv)
    from data_tools.pack import main as pack_main

    with tempfile.TemporaryDirectory() as tmp:
        images = wallpaper_files()[: args.limit] or skimage_files(Path(tmp))
        sets = {"all inputs": images, "RGB inputs": [p for p in images if is_rgb(p)]}
        in_mb = sum(p.stat().st_size for p in images) / 1e6
        print(f"{len(images)} images ({len(sets['RGB inputs'])} plain RGB), {in_mb:.0f} MB; --format {args.format}"
              f"{f' --tile {args.tile}' if args.tile else ''}, --workers {args.workers}, median of {args.repeat}")
        floor_run(images, Path(tmp) / "warm.tar")  # page cache warm for both
        for label, files in sets.items():
            listing = Path(tmp) / "inputs.txt"
            listing.write_text("\n".join(map(str, files)) + "\n")
            floor = cpu_of(lambda files=files: floor_run(files, Path(tmp) / "floor.tar"), args.repeat)
            cost = cpu_of(lambda listing=listing: pack_run(pack_main, listing, Path(tmp) / "out", args), args.repeat)
            print(f"{label:10s}: pack {len(files) / cost:7.1f} images/CPU-s ({1000 * cost / len(files):6.2f} ms each)"
                  f" | floor (read + tar) {len(files) / floor:7.1f} images/CPU-s ({1000 * floor / len(files):5.2f} ms)"
                  f" | pack costs {cost / floor:5.1f}x the floor")


if __name__ == "__main__":
    main()
