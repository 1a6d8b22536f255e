"""Pack image folders or file lists into WebDataset tar shards: ``prefix-000000.tar`` + manifest.json + sizes.json.

Each sample is ``KEY.{jpg,png,webp}`` (the image) and ``KEY.json`` (source path, width, height, mode, sha256 of
the stored bytes, encoding, box when tiled or cropped). Inputs are sorted, so shard contents are a pure function
of the inputs and options: a re-run skips finished shards and rewrites nothing (``.tmp`` + ``os.replace``).

    python data_tools/pack.py /data/DIV2K /data/lists/flickr.txt --out /shards/hq --workers 16 --min-size 512
    python data_tools/pack.py /data/DIV2K --out /shards/tiles --tile 768          # ~768-px tiles, lossless
    python data_tools/pack.py SRC --out DIR --num-parts 8 --part 3   # one part of a Slurm job array
    python data_tools/pack.py --merge-manifests --out DIR             # after all parts: manifest.json + sizes.json
    python data_tools/pack.py --verify --out DIR                      # decode every sample; exit 1 if any is bad
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from data_tools.manifest import merge_manifests, part_manifest_name, summarize, write_manifest
from data_tools.samples import DEDUP, FORMATS, ImageOptions, InputResult, list_inputs, process_input
from data_tools.shards import ShardWriter
from data_tools.verify import find_shards, verify_shards
from vosr.images import jpeg_codec

BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'1G' -> 1073741824 (binary K/M/G/T suffixes, optional trailing B)."""
    t = text.strip().upper().removesuffix("B")
    unit = t[-1] if t and t[-1] in BYTE_UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * BYTE_UNITS[unit])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--max-bytes {text!r}: expected e.g. 500M or 1G") from e


def build_parser() -> argparse.ArgumentParser:
    """The pack.py command line."""
    p = argparse.ArgumentParser(prog="python data_tools/pack.py", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", nargs="*", help="image folders (recursive), .txt lists of paths, or images;\n"
                                          "with --verify: shard folders or .tar files (default --out)")
    p.add_argument("--out", help="output folder for shards and manifests")
    p.add_argument("--prefix", default="shard", help="shard name prefix (default: shard)")
    p.add_argument("--max-samples", type=int, default=1000, help="samples per shard at most (default: 1000)")
    p.add_argument("--max-bytes", type=parse_bytes, default="1G", help="shard size at most, e.g. 500M (default: 1G)")
    p.add_argument("--min-size", type=int, default=0, help="skip images whose short side is below this (px)")
    p.add_argument("--max-pixels", type=int, default=1 << 28, help="skip images with more pixels (default: 2^28)")
    p.add_argument("--short-side", type=str, default="",
                   help="store each image downscaled (Lanczos) to these short sides, e.g. 512,320 (comma-\n"
                        "separated; an image no larger is stored at its own size once), as Real-ESRGAN's\n"
                        "multi-scale DF2K: gives small training crops the detail per pixel of real photos;\n"
                        "combines with --tile / --crop-size; re-encoded losslessly (default: own size)")
    p.add_argument("--tile", type=int, default=0,
                   help="store tiles of about this side instead of whole images (0 = off; e.g. 768):\n"
                        "sides split into round(side / tile) abutting parts (no gaps, no overlap); JPEGs cut\n"
                        "losslessly on the MCU grid (libjpeg-turbo), else re-encoded at --quality; PNG/WebP\n"
                        "re-encoded losslessly")
    p.add_argument("--crop-size", type=int, default=0, help="cut images with a side > this into fixed crops, "
                                                            "re-encoded in --format (0 = off)")
    p.add_argument("--crop-stride", type=int, default=None, help="step between crops (default: 3/4 crop size)")
    p.add_argument("--format", choices=FORMATS, default="keep",
                   help="keep: original bytes of jpg/png/webp in any mode (the stream converts at crop time),\n"
                        "other formats as PNG; png | jpg (q=--quality, 4:4:4) | webp (q=--quality or\n"
                        "--webp-lossless): converted to 8-bit RGB")
    p.add_argument("--dedup", choices=DEDUP, default="bytes",
                   help="drop repeated inputs by sha256 of the file bytes (default), of the decoded pixels\n"
                        "(decodes every image), or not at all")
    p.add_argument("--flat-threshold", type=float, default=1.0,
                   help="skip images whose luma std (0-255, on a ~64-px copy) is below this, reason 'flat'\n"
                        "(default: 1.0; 0 = off)")
    p.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality (default: 95)")
    p.add_argument("--webp-lossless", action="store_true", help="lossless WebP")
    p.add_argument("--png-level", type=int, default=3, help="PNG zlib level 0-9 (default: 3; 6 is ~3x slower, "
                                                            "~9%% smaller)")
    p.add_argument("--workers", type=int, default=1, help="decode/encode processes (default: 1 = in-process)")
    p.add_argument("--num-parts", type=int, default=None, help="split the work into N parts (default: "
                                                               "$SLURM_ARRAY_TASK_COUNT or 1)")
    p.add_argument("--part", type=int, default=None, help="which part to pack, 0-based (default: "
                                                          "$SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN or 0)")
    p.add_argument("--merge-manifests", action="store_true", help="only merge manifest-partNNNN.json files")
    p.add_argument("--verify", action="store_true", help="only verify existing shards (decode every sample)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_part(args: argparse.Namespace) -> tuple[int, int]:
    """(num_parts, part) from the flags, else from the Slurm job-array environment."""
    env = os.environ
    num_parts = args.num_parts if args.num_parts is not None else int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    if args.part is not None:
        part = args.part
    elif "SLURM_ARRAY_TASK_ID" in env and args.num_parts is None:
        part = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    else:
        part = 0
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"--part {part} is not in [0, --num-parts {num_parts}); change --part/--num-parts")
    return num_parts, part


def image_options(args: argparse.Namespace) -> ImageOptions:
    """Checked per-image options from the flags."""
    stride = args.crop_stride if args.crop_stride is not None else args.crop_size * 3 // 4  # BasicSR-like overlap
    if args.crop_size < 0 or (args.crop_size and not 1 <= stride <= args.crop_size):
        raise ValueError(f"--crop-stride {stride} must be in [1, --crop-size {args.crop_size}]; change --crop-stride")
    if args.tile < 0 or (args.tile and args.crop_size):
        raise ValueError(f"--tile {args.tile} must be >= 0 and not combined with --crop-size; use one of them")
    try:
        short_sides = tuple(int(v) for v in args.short_side.split(",") if v.strip())
    except ValueError:
        short_sides = (0,)
    if any(v < 1 for v in short_sides):
        raise ValueError(f"--short-side {args.short_side!r} must be positive integers, e.g. 512,320")
    if args.flat_threshold < 0:
        raise ValueError(f"--flat-threshold {args.flat_threshold} must be >= 0 (0 = off)")
    if args.max_samples < 1 or args.max_bytes < 1:
        raise ValueError("--max-samples and --max-bytes must be positive; change them")
    if not 1 <= args.quality <= 100 or not 0 <= args.png_level <= 9:
        raise ValueError(f"--quality {args.quality} / --png-level {args.png_level} not in 1..100 / 0..9; change it")
    return ImageOptions(min_size=args.min_size, max_pixels=args.max_pixels, crop_size=args.crop_size,
                        crop_stride=stride, tile=args.tile, fmt=args.format, quality=args.quality,
                        webp_lossless=args.webp_lossless, png_level=args.png_level, dedup=args.dedup,
                        flat_threshold=args.flat_threshold, short_sides=short_sides)


def run_fingerprint(inputs: list[str], header: dict) -> str:
    """Hash of everything that decides shard contents: the sorted inputs, options, limits and part count."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for path in inputs:
        h.update(path.encode() + b"\0")
    return h.hexdigest()


def ordered_results(tasks: list[tuple], workers: int) -> Iterator[InputResult]:
    """process_input over tasks in order; a pool with a bounded window of in-flight tasks when workers > 1."""
    if workers <= 1:
        yield from map(process_input, tasks)
        return
    # fork: workers inherit the already-imported modules, so this also works when pack.py is loaded from a path.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(process_input, (task,)))
            if len(pending) >= 4 * workers:  # back-pressure: at most 4 results per worker held in memory
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def consume(writer: ShardWriter, res: InputResult, pos: int, first: int, seen: dict[str, str]) -> None:
    """Route one input's result: a skip, a duplicate, or samples ``first..`` into the writer."""
    if res.skip is not None:
        writer.record.skipped.append({"path": res.path, "reason": res.skip})
        return
    if seen.get(res.source_hash, res.path) != res.path:
        writer.record.duplicates.append({"path": res.path, "duplicate_of": seen[res.source_hash]})
        return
    for j, sample in enumerate(res.samples[first:], start=first):
        writer.add(sample, (pos, j))
    if res.source_hash not in seen:  # after add: the source is noted in the shard its first sample lands in
        seen[res.source_hash] = res.path
        writer.note_source(res.source_hash, res.path, res.size)


def pack_part(args: argparse.Namespace, inputs: list[str], num_parts: int, part: int) -> dict:
    """Pack this part's inputs (every num_parts-th, from ``part``), resuming after finished shards."""
    opts = image_options(args)
    header = {"options": asdict(opts), "max_samples": args.max_samples, "max_bytes": args.max_bytes,
              "prefix": args.prefix, "num_parts": num_parts}
    run_fp = run_fingerprint(inputs, header)
    stem = f"{args.prefix}-{{:06d}}" if num_parts == 1 else f"{args.prefix}-p{part:04d}-{{:06d}}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, stem, args.max_samples, args.max_bytes, f"{run_fp}:{part}")
    mine = [(i, p) for i, p in enumerate(inputs) if i % num_parts == part]
    start, first = writer.resume()
    seen = {h: p for rec in writer.records for h, p in rec.hashes.items()}
    tasks = [(i, p, opts) for i, p in mine[start:]]
    bar = tqdm(total=len(mine), initial=start, unit="img", disable=args.no_progress, desc=f"part {part}")
    for pos, res in enumerate(ordered_results(tasks, args.workers), start=start):
        consume(writer, res, pos, first if pos == start else 0, seen)
        bar.update(1)
    bar.close()
    tail = writer.finish((len(mine), 0))
    manifest = summarize(writer.records, tail, len(mine), {**header, "part": part, "run_fingerprint": run_fp})
    if num_parts == 1:
        write_manifest(out, manifest)
    else:
        write_manifest(out, manifest, part_manifest_name(part))
        if sum(1 for i in range(num_parts) if (out / part_manifest_name(i)).is_file()) == num_parts:
            merge_manifests(out)  # the last part to finish merges (the Slurm merge job is a fallback)
    return manifest


def run_verify(args: argparse.Namespace) -> int:
    """Verify shards; prints every bad sample; returns the number of bad samples/shards."""
    reports = verify_shards(find_shards(args.src or [args.out]), workers=args.workers)
    bad = [b for r in reports for b in r.bad]
    for line in bad:
        print(f"BAD {line}")
    print(f"verified {len(reports)} shards, {sum(r.samples for r in reports)} samples, {len(bad)} bad")
    return len(bad)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: pack (one part), --merge-manifests, or --verify."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify:
        if run_verify(args):
            raise SystemExit(1)
        return
    if not args.out:
        parser.error("--out is required: the folder that receives the shards")  # usage line, exit 2
    if args.merge_manifests:
        m = merge_manifests(Path(args.out))
        print(f"merged {m['num_parts']} parts: {m['samples']} samples in {len(m['shards'])} shards")
        return
    if not args.src:
        raise ValueError("no SRC given: pass image folders or .txt file lists")
    num_parts, part = resolve_part(args)
    if args.tile and args.format == "keep" and jpeg_codec() is None:
        print(f"note: no lossless JPEG cropper (PyTurboJPEG + libturbojpeg0, see scripts/setup.sh): JPEG tiles are "
              f"re-encoded at --quality {args.quality}")
    inputs = list_inputs(args.src)
    m = pack_part(args, inputs, num_parts, part)
    print(f"part {part}/{num_parts}: {m['inputs']} inputs -> {m['samples']} samples in {len(m['shards'])} shards "
          f"({m['total_bytes'] / 2**20:.1f} MiB); skipped {m['skipped_count']} {m['skipped_by_reason']}, "
          f"duplicates {m['duplicates_count']}")


if __name__ == "__main__":
    main()
