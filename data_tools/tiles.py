"""Tiles at pack time (``pack.py --tile``): where to cut, and cutting JPEGs without re-encoding them.

Each side of length ``L`` is split into ``max(1, round(L / tile))`` abutting parts of near-equal length, so
tiles have no gaps and no overlap and every side lies in [0.75, 1.5) x ``tile`` (the 1.5 only where a side
fits one tile). Cut points fall on multiples of ``align`` (the JPEG MCU size, else 1).

JPEG inputs are cut losslessly with libjpeg-turbo's transform (``tjTransform`` crop, through the PyTurboJPEG
binding): the DCT coefficients are copied, nothing is re-quantised. Without it (the library is missing) they
are re-encoded at ``--quality`` with 4:4:4 chroma. Other formats are decoded, cut and re-encoded losslessly.
"""
from __future__ import annotations

from vosr.images import jpeg_codec

# tjMCUWidth / tjMCUHeight of libjpeg-turbo by TJSAMP_* (444, 422, 420, GRAY, 440, 411).
MCU_SIZE = {0: (8, 8), 1: (16, 8), 2: (16, 16), 3: (8, 8), 4: (8, 16), 5: (32, 8)}


def tile_cuts(length: int, tile: int, align: int = 1) -> list[int]:
    """Cut points ``0 = c0 < c1 < ... < cn = length`` of one side (see the module docstring)."""
    parts = max(1, round(length / tile))
    inner = [round(i * length / parts / align) * align for i in range(1, parts)]
    return [0, *sorted(set(c for c in inner if 0 < c < length)), length]


def tile_boxes(width: int, height: int, tile: int, align: tuple[int, int] = (1, 1)) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` tiles in row-major order."""
    xs, ys = tile_cuts(width, tile, align[0]), tile_cuts(height, tile, align[1])
    return [(x0, y0, x1, y1) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def jpeg_mcu(raw: bytes) -> tuple[int, int] | None:
    """MCU (width, height) of a JPEG from its header, or None without the lossless cropper."""
    jpeg = jpeg_codec()
    if jpeg is None:
        return None
    _, _, subsampling, _ = jpeg.decode_header(raw)
    return MCU_SIZE.get(subsampling, (16, 16))


def crop_jpeg_lossless(raw: bytes, boxes: list[tuple[int, int, int, int]]) -> list[bytes]:
    """Each box of a JPEG as its own JPEG, DCT coefficients copied (box origins on the MCU grid); extra markers
    (EXIF, ICC) are not copied."""
    params = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
    return jpeg_codec().crop_multiple(raw, params, copynone=True)
