"""Per-image work for pack.py: list inputs, decode to 8-bit RGB, cut crops, encode samples.

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

from PIL import Image, UnidentifiedImageError

from vosr.images import IMAGE_EXTS, composite_on_white, has_alpha, to_rgb8

FORMATS = ("keep", "png", "jpg", "webp")
WEBP_MAX_SIDE = 16383  # libwebp's hard limit on either side; larger images fall back to PNG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    fmt: str = "keep"
    """keep | png | jpg | webp."""
    quality: int = 95
    """JPEG / lossy WebP quality."""
    webp_lossless: bool = False
    """Encode WebP losslessly instead of at ``quality``."""
    png_level: int = 3
    """zlib level for PNG. Measured on 13 wallpapers/photos: level 3 encodes 3x faster than PIL's default 6
    for 9% larger files; PNG decode speed barely depends on it."""


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
    pixel_hash: str = ""
    size: tuple[int, int] = (0, 0)
    samples: list[Sample] = field(default_factory=list)


class SkipImage(Exception):
    """Raised for an input that cannot become a sample; the message is ``kind: detail``."""


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


def to_rgb8_image(img: Image.Image) -> tuple[Image.Image, str | None]:
    """A decoded image -> 8-bit RGB (alpha composited on white) and its source mode when converted."""
    if img.mode == "RGB" and not has_alpha(img):
        return img, None
    rgb, alpha = to_rgb8(img)
    return Image.fromarray(composite_on_white(rgb, alpha)), img.mode


def _open(raw: bytes, opts: ImageOptions) -> Image.Image:
    """Open and fully decode ``raw`` after cheap header checks (size limits)."""
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own --max-pixels check replaces PIL's global bomb limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if min(w, h) < opts.min_size:
                raise SkipImage(f"too_small: {w}x{h} short side < --min-size {opts.min_size}")
            if w * h > opts.max_pixels:
                raise SkipImage(f"too_large: {w}x{h} > --max-pixels {opts.max_pixels}")
            img.load()
    except UnidentifiedImageError as e:
        raise SkipImage("not_an_image: PIL cannot identify the image format") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipImage(f"corrupt: {type(e).__name__}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return img


def _keepable(raw: bytes, img: Image.Image) -> str | None:
    """Extension to store the original bytes under, when they already are plain 8-bit RGB; else None."""
    if img.format == "JPEG":
        return "jpg"
    if img.format == "WEBP":
        return "webp"
    # PIL reads 16-bit RGB PNGs as mode RGB, so check the IHDR bit depth (byte 24) and colour type (byte 25).
    if img.format == "PNG" and raw[:8] == PNG_SIGNATURE and raw[24] == 8 and raw[25] == 2:
        return "png"
    return None


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


def _make_samples(index: int, path: str, raw: bytes, img: Image.Image, opts: ImageOptions) -> InputResult:
    """Crop and encode a decoded image into samples with their json metadata."""
    src_fmt = img.format
    rgb, converted_from = to_rgb8_image(img)
    w, h = rgb.size
    digest = hashlib.sha256(f"{w}x{h}:".encode())
    digest.update(rgb.tobytes())  # not prefix + bytes: that would copy the whole pixel buffer once more
    pixel_hash = digest.hexdigest()
    result = InputResult(index=index, path=path, pixel_hash=pixel_hash, size=(w, h))
    boxes = crop_boxes(w, h, opts.crop_size, opts.crop_stride)
    keep_ext = _keepable(raw, img) if opts.fmt == "keep" and converted_from is None and boxes == [None] else None
    for j, box in enumerate(boxes):
        tile = rgb if box is None else rgb.crop(box)
        if keep_ext is not None:
            data, ext = raw, keep_ext
        else:
            data, ext = encode(tile, "png" if opts.fmt == "keep" else opts.fmt, opts)
        meta = {"source": path, "width": tile.size[0], "height": tile.size[1],
                "sha256": hashlib.sha256(data).hexdigest(), "source_width": w, "source_height": h,
                "source_format": src_fmt, "pixel_sha256": pixel_hash, "encoding": "original" if keep_ext else ext}
        if box is not None:
            meta["crop"] = list(box)
        if converted_from is not None:
            meta["converted_from"] = converted_from
        result.samples.append(Sample(key=f"{index:09d}_{j:04d}", ext=ext, data=data, meta=meta))
    return result


def process_input(task: tuple[int, str, ImageOptions]) -> InputResult:
    """Read, validate, convert, crop and encode one input file; never raises for a bad image."""
    index, path, opts = task
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return InputResult(index=index, path=path, skip=f"unreadable: {type(e).__name__}: {e}")
    try:
        img = _open(raw, opts)
        return _make_samples(index, path, raw, img, opts)
    except SkipImage as e:
        return InputResult(index=index, path=path, skip=str(e))
    except Exception as e:  # noqa: BLE001 - one bad file must never end the run
        return InputResult(index=index, path=path, skip=f"error: {type(e).__name__}: {e}")
