"""Per-image work for pack.py: list inputs, check them, keep their bytes or cut tiles/crops, encode samples.

``--format keep`` (the default) stores the original bytes of every JPEG/PNG/WebP whatever its mode (alpha, gray,
palette, 16-bit, CMYK: the json names the mode, and the training stream converts at crop time through
``vosr.images``): such a file is never decoded in full, only its header read, its container checked and its
file bytes hashed. Pixels are decoded only where they are needed: conversion (other formats, ``--format
png|jpg|webp``), ``--crop-size`` crops, tiles that cannot be cut losslessly, ``--dedup pixels``, and the
flatness test of transparent or very small files (``data_tools.probe.is_flat``).

Runs inside pool workers, so everything here is a plain function of its arguments and never raises for a bad
image: :func:`process_input` turns every failure into a skip reason.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data_tools.probe import KEEPABLE, Probe, SkipImage, check_integrity, is_flat, open_lazy, probe
from data_tools.tiles import crop_jpeg_lossless, jpeg_mcu, tile_boxes
from vosr.images import HIGH_DEPTH_MODES, IMAGE_EXTS, rgb8_on_white

FORMATS = ("keep", "png", "jpg", "webp")
DEDUP = ("bytes", "pixels", "none")
WEBP_MAX_SIDE = 16383  # libwebp's hard limit on either side; larger images fall back to PNG
PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
"""Modes a tile keeps when re-encoded as PNG (the stream converts them); others are converted first."""


@dataclass(frozen=True)
class ImageOptions:
    """How each input image becomes samples (picklable, sent to every worker)."""

    min_size: int = 0
    """Skip images whose short side is below this (px)."""
    max_pixels: int = 1 << 28
    """Skip images with more pixels than this (decompression-bomb guard)."""
    crop_size: int = 0
    """Cut images larger than this into crop_size x crop_size crops (0 = never crop)."""
    crop_stride: int = 768
    """Step between crop origins (px); < crop_size gives overlapping crops."""
    tile: int = 0
    """Store tiles of about this side instead of whole images (0 = whole images); see data_tools.tiles."""
    short_sides: tuple[int, ...] = ()
    """Store each input once per side S, downscaled (Lanczos) so its short side is S (an input already no
    larger is stored at its own size, once), as Real-ESRGAN's multi-scale DF2K; () = the input's own size.
    Matches the detail per pixel of the training crops to the photos the model will see."""
    fmt: str = "keep"
    """keep | png | jpg | webp."""
    quality: int = 95
    """JPEG / lossy WebP quality."""
    webp_lossless: bool = False
    """Encode WebP losslessly instead of at ``quality``."""
    png_level: int = 3
    """zlib level for PNG. Measured on 13 wallpapers/photos: level 3 encodes 3x faster than PIL's default 6
    for 9% larger files; PNG decode speed barely depends on it."""
    dedup: str = "bytes"
    """bytes: drop inputs whose file bytes repeat (sha256); pixels: whose decoded RGB repeats (decodes all);
    none."""
    flat_threshold: float = 1.0
    """Skip images whose luma std (0-255, on a ~64-px copy) is below this (0 = keep all). Measured on the 88
    installed wallpapers: the 7 that are blank once composited on white have std <= 0.17, the least varied
    real image 4.1."""


@dataclass
class Sample:
    """One encoded sample: ``key.ext`` image bytes plus its json metadata."""

    key: str
    ext: str
    data: bytes
    meta: dict


@dataclass
class InputResult:
    """What one input file produced: samples, or the reason it was skipped."""

    index: int
    path: str
    skip: str | None = None
    source_hash: str = ""
    """What duplicates are recognised by (sha256 of the file bytes or of the pixels, per --dedup)."""
    size: tuple[int, int] = (0, 0)
    samples: list[Sample] = field(default_factory=list)


def list_inputs(sources: list[str]) -> list[str]:
    """Sorted, de-duplicated absolute image paths from folders (recursive), ``.txt`` lists and image files."""
    paths: set[str] = set()
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths.update(os.path.abspath(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.add(os.path.abspath(p.parent / line))  # relative entries are relative to the list file
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            paths.add(os.path.abspath(p))
        elif p.exists():
            raise ValueError(f"SRC {src!r} is neither a folder, a .txt file list nor an image; change SRC")
        else:
            raise FileNotFoundError(f"SRC {src!r} does not exist; change SRC")
    return sorted(paths)


def crop_starts(side: int, size: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride`` px plus one flush with the far border (BasicSR style)."""
    if side <= size:
        return [0]
    starts = list(range(0, side - size + 1, stride))
    if starts[-1] + size < side:
        starts.append(side - size)
    return starts


def crop_boxes(width: int, height: int, size: int, stride: int) -> list[tuple[int, int, int, int] | None]:
    """``(left, top, right, bottom)`` crops in row-major order, or ``[None]`` when the image is not cut."""
    if size <= 0 or max(width, height) <= size:
        return [None]
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in crop_starts(height, size, stride) for x in crop_starts(width, size, stride)]


def encode(img: Image.Image, fmt: str, opts: ImageOptions) -> tuple[bytes, str]:
    """Encode an RGB image as ``fmt`` (png | jpg | webp); returns ``(bytes, ext)``."""
    buf = io.BytesIO()
    if fmt == "webp" and max(img.size) > WEBP_MAX_SIDE:
        fmt = "png"
    if fmt == "jpg":
        # 4:4:4 chroma: HQ targets for SR should not carry chroma-subsampling blur.
        img.save(buf, format="JPEG", quality=opts.quality, subsampling=0)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=opts.webp_lossless, quality=100 if opts.webp_lossless else opts.quality)
    else:
        img.save(buf, format="PNG", compress_level=opts.png_level)
        fmt = "png"
    return buf.getvalue(), fmt


def _encode_lossless(tile: Image.Image, source_format: str, opts: ImageOptions) -> tuple[bytes, str]:
    """A tile in its own mode: WebP sources as lossless WebP, the rest as PNG."""
    buf = io.BytesIO()
    if source_format == "WEBP" and tile.mode in ("RGB", "RGBA"):
        tile.save(buf, format="WEBP", lossless=True, quality=100)
        return buf.getvalue(), "webp"
    tile.save(buf, format="PNG", compress_level=opts.png_level)
    return buf.getvalue(), "png"


def _decode(img: Image.Image) -> Image.Image:
    """Decode all pixels of a lazily opened image; SkipImage('corrupt: ...') when that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipImage(f"corrupt: {type(e).__name__}: {e}") from e
    return img


def _pixel_hash(img: Image.Image) -> str:
    rgb = rgb8_on_white(img)
    digest = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}:".encode())
    digest.update(rgb.data)  # not prefix + bytes: that would copy the whole pixel buffer once more
    return digest.hexdigest()


def _needs_pixels(info: Probe, raw: bytes, opts: ImageOptions) -> bool:
    """Whether this input must be decoded in full (see the module docstring)."""
    if opts.dedup == "pixels" or opts.crop_size or opts.short_sides or opts.fmt != "keep" \
            or info.format not in KEEPABLE:
        return True
    if opts.tile:
        return not (info.format == "JPEG" and jpeg_mcu(raw) is not None)
    return False


def _sample(key: str, data: bytes, ext: str, meta: dict, **extra) -> Sample:
    return Sample(key=key, ext=ext, data=data, meta={"sha256": hashlib.sha256(data).hexdigest(), **meta, **extra})


def _original(index: int, raw: bytes, info: Probe, meta: dict) -> list[Sample]:
    """The input's own bytes as its one sample (``meta`` already holds their sha256)."""
    return [Sample(key=f"{index:09d}_0000", ext=KEEPABLE[info.format], data=raw,
                   meta={**meta, "width": info.width, "height": info.height, "encoding": "original"})]


def _tiles(index: int, raw: bytes, info: Probe, img: Image.Image | None, meta: dict,
           opts: ImageOptions) -> list[Sample]:
    """Tiles of one input: lossless JPEG crops, else decoded tiles in their own mode (converted to RGB for
    modes PNG cannot hold losslessly and for --format png|jpg|webp)."""
    lossless_jpeg = opts.fmt == "keep" and info.format == "JPEG" and jpeg_mcu(raw) is not None
    boxes = tile_boxes(info.width, info.height, opts.tile, jpeg_mcu(raw) if lossless_jpeg else (1, 1))
    if boxes == [(0, 0, info.width, info.height)] and opts.fmt == "keep" and info.format in KEEPABLE:
        return _original(index, raw, info, meta)
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    if lossless_jpeg:
        datas = crop_jpeg_lossless(raw, boxes)
        return [_sample(f"{index:09d}_{j:04d}", data, "jpg", meta, box=list(box), width=box[2] - box[0],
                        height=box[3] - box[1], encoding="lossless_crop")
                for j, (box, data) in enumerate(zip(boxes, datas))]
    keep_mode = opts.fmt == "keep" and info.format in ("PNG", "WEBP") and img.mode in PNG_MODES \
        and img.mode not in HIGH_DEPTH_MODES
    source = img if keep_mode else Image.fromarray(rgb8_on_white(img))
    extra = {} if keep_mode or info.plain_rgb else {"converted_from": info.mode}
    fmt = opts.fmt if opts.fmt != "keep" else ("jpg" if info.format == "JPEG" else "png")  # keep: no cropper
    samples = []
    for j, box in enumerate(boxes):
        tile = source.crop(box)
        if keep_mode:
            data, ext = _encode_lossless(tile, info.format, opts)
        else:
            data, ext = encode(tile, fmt, opts)
        samples.append(_sample(f"{index:09d}_{j:04d}", data, ext, meta, box=list(box), width=tile.size[0],
                               height=tile.size[1], encoding=ext, **extra))
    return samples


def _converted(index: int, raw: bytes, info: Probe, img: Image.Image, meta: dict,
               opts: ImageOptions) -> list[Sample]:
    """Whole images or --crop-size crops, as 8-bit RGB re-encoded in --format (png for keep)."""
    boxes = crop_boxes(info.width, info.height, opts.crop_size, opts.crop_stride)
    if boxes == [None] and opts.fmt == "keep" and info.format in KEEPABLE:
        return _original(index, raw, info, meta)
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    rgb = Image.fromarray(rgb8_on_white(img))
    extra = {} if info.plain_rgb else {"converted_from": info.mode}
    samples = []
    for j, box in enumerate(boxes):
        tile = rgb if box is None else rgb.crop(box)
        data, ext = encode(tile, "png" if opts.fmt == "keep" else opts.fmt, opts)
        box_meta = {} if box is None else {"box": list(box)}
        samples.append(_sample(f"{index:09d}_{j:04d}", data, ext, meta, width=tile.size[0], height=tile.size[1],
                               encoding=ext, **box_meta, **extra))
    return samples


def downscaled(img: Image.Image, short_sides: tuple[int, ...]) -> list[tuple[int, Image.Image]]:
    """``(side, copy)`` per distinct target: 8-bit RGB copies whose short side is ``min(S, own side)``."""
    rgb = Image.fromarray(rgb8_on_white(img))
    own = min(rgb.size)
    copies = []
    for side in sorted({min(s, own) for s in short_sides}, reverse=True):
        scale = side / own
        size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
        # reducing_gap: a box reduce first, then Lanczos over the last factor of 3 (PIL: indistinguishable
        # from a full Lanczos in most cases, several times faster for large factors)
        copies.append((side, rgb if size == rgb.size else rgb.resize(size, Image.LANCZOS, reducing_gap=3.0)))
    return copies


def _rescaled(index: int, img: Image.Image, meta: dict, opts: ImageOptions) -> list[Sample]:
    """--short-side copies of one input, each tiled (--tile) or cropped (--crop-size), re-encoded losslessly
    (--format keep: PNG)."""
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    fmt = "png" if opts.fmt == "keep" else opts.fmt
    samples: list[Sample] = []
    for side, copy in downscaled(img, opts.short_sides):
        width, height = copy.size
        if opts.tile:
            boxes: list = tile_boxes(width, height, opts.tile, (1, 1))
        else:
            boxes = crop_boxes(width, height, opts.crop_size, opts.crop_stride)
        for box in boxes:
            part = copy if box is None or tuple(box) == (0, 0, width, height) else copy.crop(box)
            data, ext = encode(part, fmt, opts)
            box_meta = {} if box is None else {"box": list(box)}
            samples.append(_sample(f"{index:09d}_{len(samples):04d}", data, ext, meta, width=part.size[0],
                                   height=part.size[1], encoding=ext, short_side=side, **box_meta))
    return samples


def _make_samples(index: int, path: str, raw: bytes, opts: ImageOptions) -> InputResult:
    """Check one input and turn it into samples with their json metadata (SkipImage for a skip)."""
    img = open_lazy(raw)
    info = probe(raw, img)
    if min(info.width, info.height) < opts.min_size:
        raise SkipImage(f"too_small: {info.width}x{info.height} short side < --min-size {opts.min_size}")
    if info.width * info.height > opts.max_pixels:
        raise SkipImage(f"too_large: {info.width}x{info.height} > --max-pixels {opts.max_pixels}")
    check_integrity(raw, info.format)
    decoded = _decode(img) if _needs_pixels(info, raw, opts) else None
    try:
        flat, std = is_flat(raw, info, opts.flat_threshold, decoded)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipImage(f"corrupt: {type(e).__name__}: {e}") from e
    if flat:
        raise SkipImage(f"flat: luma std {std:.2f} < --flat-threshold {opts.flat_threshold:g} (on a reduced copy)")
    raw_sha = hashlib.sha256(raw).hexdigest()
    source_hash = _pixel_hash(decoded) if opts.dedup == "pixels" else raw_sha if opts.dedup == "bytes" else path
    meta = {"source": path, "source_width": info.width, "source_height": info.height,
            "source_format": info.format, "mode": info.mode, "sha256": raw_sha}
    if opts.short_sides:
        samples = _rescaled(index, decoded, meta, opts)
    elif opts.tile:
        samples = _tiles(index, raw, info, decoded, meta, opts)
    else:
        samples = _converted(index, raw, info, decoded, meta, opts)
    return InputResult(index=index, path=path, source_hash=source_hash, size=(info.width, info.height),
                       samples=samples)


def process_input(task: tuple[int, str, ImageOptions]) -> InputResult:
    """Read, check, and keep, cut or convert one input file; never raises for a bad image."""
    index, path, opts = task
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return InputResult(index=index, path=path, skip=f"unreadable: {type(e).__name__}: {e}")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own --max-pixels check (from the header) replaces PIL's bomb limit
    try:
        return _make_samples(index, path, raw, opts)
    except SkipImage as e:
        return InputResult(index=index, path=path, skip=str(e))
    except Exception as e:  # noqa: BLE001 - one bad file must never end the run
        return InputResult(index=index, path=path, skip=f"error: {type(e).__name__}: {e}")
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
