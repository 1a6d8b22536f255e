"""Cheap per-file checks for pack.py: what an image is from its header, whether its bytes are whole, whether it is flat.

None of these decode a whole image unless they must: ``probe`` reads the header (size, mode), ``check_integrity``
walks the container (JPEG markers up to the end-of-image, PNG chunk CRCs, WebP RIFF chunks) and ``is_flat``
measures how much the pixels vary on a reduced copy, decoding only what it needs to decide.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from vosr.images import ALPHA_MODES, HIGH_DEPTH_MODES, rgb8_on_white

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEEPABLE = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
"""Formats whose original bytes a sample may keep (what the training stream decodes), and their extension."""
FLAT_SIDE = 64
"""Short side (px) of the reduced copy that flatness is measured on (a box filter by an integer factor)."""
FLAT_BPP = 0.25
"""Opaque files with at least this many bits per pixel are not decoded to test flatness: a flat image compresses
far below it (uniform or smooth-gradient 8-bit images: < 0.05 bpp as JPEG q95 or PNG), while the lowest-rate
photo among the 88 installed wallpapers has 0.34 bpp. Transparent images are always tested (their file size
says nothing about what they look like composited on white)."""
FLAT_BAND = 16
"""Transparent PNGs are decoded in a top band of 1/FLAT_BAND of their rows first; most are proven not flat there."""
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class SkipImage(Exception):
    """Raised for an input that cannot become a sample; the message is ``kind: detail``."""


@dataclass(frozen=True)
class Probe:
    """What the header of an image file says."""

    format: str
    """PIL's format name (JPEG, PNG, WEBP, TIFF, BMP, ...)."""
    mode: str
    """PIL mode of the decoded pixels; ``RGB;16``/``RGBA;16`` for 16-bit colour PNGs (PIL decodes them to 8 bit)."""
    width: int
    height: int
    transparent: bool
    """The image has an alpha band or a transparency entry."""

    @property
    def plain_rgb(self) -> bool:
        """8-bit RGB without transparency: the bytes are a training target as they are."""
        return self.mode == "RGB" and not self.transparent


def open_lazy(raw: bytes) -> Image.Image:
    """PIL image of ``raw`` with only its header read; SkipImage when PIL does not know the format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(raw))
    except UnidentifiedImageError as e:
        raise SkipImage("not_an_image: PIL cannot identify the image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise SkipImage(f"corrupt: {type(e).__name__}: {e}") from e


def probe(raw: bytes, img: Image.Image) -> Probe:
    """Format, mode, size and transparency of a lazily opened image (no pixel decoding)."""
    mode = img.mode
    if img.format == "PNG" and raw[:8] == PNG_SIGNATURE and raw[24] == 16 and mode in ("RGB", "RGBA"):
        mode += ";16"  # IHDR bit depth (byte 24): PIL reads 16-bit colour PNGs as 8-bit RGB(A)
    transparent = img.mode in ALPHA_MODES or "transparency" in img.info
    return Probe(format=img.format or "?", mode=mode, width=img.size[0], height=img.size[1], transparent=transparent)


def _check_jpeg(raw: bytes) -> None:
    """SOI first, then marker segments up to the first scan, and an end-of-image marker after that scan."""
    if raw[:2] != b"\xff\xd8":
        raise SkipImage("corrupt: JPEG does not start with SOI")
    pos = 2
    while True:
        if pos + 4 > len(raw) or raw[pos] != 0xFF:
            raise SkipImage(f"corrupt: JPEG marker structure broken at byte {pos}")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", raw[pos + 2:pos + 4])
        pos += 2 + length
    # Entropy-coded data cannot hold FF D9 (a 0xFF data byte is stuffed with 00), so an EOI after the first scan
    # marks the end of the image; trailing bytes after it (padding, appended data) are allowed.
    if raw.rfind(b"\xff\xd9") < pos:
        raise SkipImage("corrupt: JPEG has no end-of-image marker (truncated)")


def _check_png(raw: bytes) -> None:
    """Every chunk's CRC up to IEND."""
    if raw[:8] != PNG_SIGNATURE:
        raise SkipImage("corrupt: PNG signature missing")
    pos = 8
    while True:
        if pos + 12 > len(raw):
            raise SkipImage("corrupt: PNG ends before IEND (truncated)")
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        end = pos + 8 + length
        if end + 4 > len(raw):
            raise SkipImage(f"corrupt: PNG chunk {raw[pos + 4:pos + 8]!r} runs past the end of the file (truncated)")
        (crc,) = struct.unpack(">I", raw[end:end + 4])
        if zlib.crc32(raw[pos + 4:end]) != crc:
            raise SkipImage(f"corrupt: PNG chunk {raw[pos + 4:pos + 8]!r} at byte {pos} fails its CRC")
        if raw[pos + 4:pos + 8] == b"IEND":
            return
        pos = end + 4


def _check_webp(raw: bytes) -> None:
    """RIFF size equals the file, and the chunks tile it exactly."""
    if raw[:4] != b"RIFF" or raw[8:12] != b"WEBP":
        raise SkipImage("corrupt: WebP RIFF header missing")
    (riff,) = struct.unpack("<I", raw[4:8])
    if riff + 8 > len(raw):
        raise SkipImage(f"corrupt: WebP RIFF size {riff + 8} > file size {len(raw)} (truncated)")
    pos = 12
    while pos < riff + 8:
        if pos + 8 > len(raw):
            raise SkipImage("corrupt: WebP chunk header past the end of the file")
        (size,) = struct.unpack("<I", raw[pos + 4:pos + 8])
        pos += 8 + size + (size & 1)
    if pos != riff + 8:
        raise SkipImage("corrupt: WebP chunks do not add up to the RIFF size")


def check_integrity(raw: bytes, fmt: str) -> None:
    """Container-level check of the formats whose bytes may be kept; SkipImage('corrupt: ...') when broken.

    Other formats (TIFF, BMP, ...) are converted, so their full decode is their check.
    """
    checks = {"JPEG": _check_jpeg, "PNG": _check_png, "WEBP": _check_webp}
    if fmt in checks:
        checks[fmt](raw)


def flat_factor(width: int, height: int) -> int:
    """The integer reduction that brings the short side to about ``FLAT_SIDE``."""
    return max(1, min(width, height) // FLAT_SIDE)


def luma_var(img: Image.Image, factor: int | None = None) -> float:
    """Variance of BT.601 luma (0-255 scale) of the image composited on white, on a copy reduced by ``factor``
    (default :func:`flat_factor`; box filter, alpha premultiplied first so that reducing commutes with
    compositing)."""
    factor = factor or flat_factor(*img.size)
    if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
        rgba = img.convert("RGBA").convert("RGBa").reduce(factor)
        premultiplied = np.asarray(rgba, dtype=np.float32)
        rgb = premultiplied[..., :3] + (255.0 - premultiplied[..., 3:])  # c*a + 255*(1 - a), a in [0, 255]
    elif img.mode in HIGH_DEPTH_MODES or img.mode == "CMYK":
        rgb = np.asarray(Image.fromarray(rgb8_on_white(img)).reduce(factor), dtype=np.float32)
    else:
        rgb = np.asarray(img.convert("RGB").reduce(factor), dtype=np.float32)
    return float((rgb @ LUMA).var())


def _decode_top_band(raw: bytes, rows: int) -> Image.Image | None:
    """The first ``rows`` rows of a non-interlaced PNG, decoded without inflating the rest; None if not possible."""
    img = open_lazy(raw)
    if img.format != "PNG" or img.info.get("interlace") or len(img.tile) != 1:
        return None
    try:
        img.tile = [img.tile[0]._replace(extents=(0, 0, img.size[0], rows))]
        img._size = (img.size[0], rows)  # PIL decodes exactly the tile's rows and stops reading the stream
        img.load()
    except (AttributeError, OSError, ValueError):
        return None
    return img


def is_flat(raw: bytes, info: Probe, threshold: float, decoded: Image.Image | None = None) -> tuple[bool, float]:
    """(flat, luma std) where flat means the std of :func:`luma_var` is below ``threshold``.

    Decodes as little as it can: a given ``decoded`` image is used as it is; an opaque file of at least
    ``FLAT_BPP`` bits per pixel is not flat without decoding (std reported as nan); a JPEG is decoded at 1/8
    scale; a transparent PNG first in its top band, which proves most images not flat (the variance of the
    whole is at least the band's share of rows times the band's variance, by the law of total variance).
    """
    if threshold <= 0:
        return False, float("nan")
    if decoded is None and not info.transparent and len(raw) * 8 < FLAT_BPP * info.width * info.height:
        decoded = open_lazy(raw)
        if decoded.format == "JPEG":
            decoded.draft(decoded.mode, (max(1, info.width // 8), max(1, info.height // 8)))
        decoded.load()
    if decoded is None and not info.transparent:
        return False, float("nan")
    if decoded is None:
        factor = flat_factor(info.width, info.height)
        band_rows = info.height // FLAT_BAND // factor * factor  # whole rows of the reduced copy
        band = _decode_top_band(raw, band_rows) if band_rows >= FLAT_SIDE else None
        if band is not None and band_rows / info.height * luma_var(band, factor) >= threshold**2:
            return False, float("nan")
        decoded = open_lazy(raw)
        decoded.load()
    std = luma_var(decoded) ** 0.5
    return std < threshold, std

