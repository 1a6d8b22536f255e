"""HR crops from decoded samples, and the shuffle buffer they wait in.

A sample's size comes from its header, its crops are drawn, and it is decoded once (a PNG only down to
the lowest crop) and cut into ``data.crops_per_image`` crops, whatever its size, so every image is
drawn as often as with one crop per decode. Each crop's position is uniform over the image and its flips are
fair coins, drawn one crop after the other from the slot's generator: per crop, the same distribution as one
crop per decode. RGB and gray JPEGs are decoded by TurboJPEG where it is installed (the same pixels as PIL,
~1.5x faster), everything else by PIL; conversion to 8-bit RGB (alpha over white, gray, palette, 16-bit,
CMYK) happens per crop, through ``vosr.images``.

The crops then wait in a ``CropShuffler``, a shuffle buffer bounded in bytes, from which they leave in random
order, so the crops of one image are spread through the stream instead of arriving side by side.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vosr.images import HIGH_DEPTH_MODES, jpeg_codec, rgb8_crop, rgb8_on_white

IMAGE_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
"""Sample entries read as the image, in order of preference."""
SHUFFLE_INITIAL = 100
"""Crops buffered before the first one leaves the shuffle buffer: start fast, then grow to the full
``data.shuffle_buffer_mb`` by emitting half as many crops as are added."""

CropParams = tuple[int, int, bool, bool]
"""(left, top, flip left-right, flip up-down) of one crop."""
Decoded = Image.Image | np.ndarray
"""A decoded sample: a PIL image in its own mode, or (H, W, 3) uint8 RGB (TurboJPEG)."""
TJ_GRAY_OR_RGB = (0, 1, 2)  # TJCS_RGB, TJCS_YCbCr, TJCS_GRAY: what TurboJPEG decodes to RGB like PIL does


class SmallImage(ValueError):
    """The image is smaller than the crop and ``data.small_images`` is ``skip``."""


@dataclass(frozen=True)
class CropSpec:
    """How samples become crops (the parts of ``DataConfig`` the workers need)."""

    size: int
    """Crop side (px)."""
    per_image: int = 1
    """Crops per decoded image."""
    flip: bool = False
    """Random horizontal/vertical flips."""
    small: str = "skip"
    """skip | upscale images whose short side is below ``size``."""


def _image_entry(files: dict[str, bytes]) -> tuple[str, bytes]:
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        raise ValueError(f"no image entry ({', '.join(IMAGE_EXTS)}) among {sorted(files)}")
    return ext, files[ext]


def _turbo_header(ext: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of an RGB or gray JPEG that TurboJPEG will decode; None where PIL decodes."""
    codec = jpeg_codec() if ext in ("jpg", "jpeg") else None
    if codec is None:
        return None
    try:
        width, height, _, colorspace = codec.decode_header(data)
    except OSError:
        return None  # let PIL say what is wrong
    return (width, height) if colorspace in TJ_GRAY_OR_RGB else None


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data))


def _upscaled(width: int, height: int, size: int) -> tuple[int, int]:
    """Bicubic target size whose short side is ``size`` (integer ceil)."""
    short = min(width, height)
    return max(size, -(-width * size // short)), max(size, -(-height * size // short))


def sample_size(files: dict[str, bytes], spec: CropSpec) -> tuple[int, int]:
    """(width, height) the crops of a sample are drawn on, from its header: ``SmallImage`` when it is smaller
    than the crop and ``spec.small`` is skip, the upscaled size when it is upscale."""
    ext, data = _image_entry(files)
    width, height = _turbo_header(ext, data) or _open(data).size
    if min(width, height) >= spec.size:
        return width, height
    if spec.small == "skip":
        raise SmallImage(f"{width}x{height} is smaller than the {spec.size}-px crop (data.small_images=skip)")
    return _upscaled(width, height, spec.size)


def decode(files: dict[str, bytes], spec: CropSpec, rows: int | None = None) -> Decoded:
    """The decoded image of a sample, ready to crop at the size :func:`sample_size` gives: high-depth modes
    converted to RGB, small images bicubically upscaled. ``rows``: only the top rows that many crops need
    (PNG stops inflating there; other formats decode whole). ValueError/OSError when missing or corrupt."""
    ext, data = _image_entry(files)
    width, height = sample_size(files, spec)
    if _turbo_header(ext, data) is not None:
        from turbojpeg import TJPF_RGB

        return jpeg_codec().decode(data, pixel_format=TJPF_RGB)
    img = _open(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (width, height) != img.size:
            return Image.fromarray(rgb8_on_white(img)).resize((width, height), Image.Resampling.BICUBIC)
        if img.mode in HIGH_DEPTH_MODES:  # converted whole: to_rgb8 scales these by the image's range
            return Image.fromarray(rgb8_on_white(img))
        if rows is not None and rows < height and img.format == "PNG" and not img.info.get("interlace") \
                and len(img.tile) == 1:
            img.tile = [img.tile[0]._replace(extents=(0, 0, width, rows))]
            img._size = (width, rows)  # PIL decodes exactly the tile's rows, then stops reading
        img.load()
    return img


def rows_needed(params: list[CropParams], size: int) -> int:
    """Rows of the image that crops at ``params`` reach down to."""
    return max(y for _, y, _, _ in params) + size


def draw_params(width: int, height: int, count: int, spec: CropSpec, gen: torch.Generator) -> list[CropParams]:
    """``count`` independent uniform crop positions (and fair flip coins when ``spec.flip``)."""
    params = []
    for _ in range(count):
        x = int(torch.randint(0, width - spec.size + 1, (1,), generator=gen))
        y = int(torch.randint(0, height - spec.size + 1, (1,), generator=gen))
        coins = torch.rand(2, generator=gen).tolist() if spec.flip else (1.0, 1.0)
        params.append((x, y, coins[0] < 0.5, coins[1] < 0.5))
    return params


def centre_params(width: int, height: int, spec: CropSpec) -> list[CropParams]:
    """The centre crop, unflipped (validation)."""
    return [((width - spec.size) // 2, (height - spec.size) // 2, False, False)]


def cut(img: Decoded, params: list[CropParams], size: int) -> list[np.ndarray]:
    """The (size, size, 3) uint8 RGB crops of ``img`` at ``params``."""
    out = []
    for x, y, flip_lr, flip_ud in params:
        if isinstance(img, np.ndarray):
            crop = img[y:y + size, x:x + size]  # (S, S, 3)
        else:
            crop = rgb8_crop(img, (x, y, x + size, y + size))
        if flip_lr:
            crop = crop[:, ::-1]
        if flip_ud:
            crop = crop[::-1]
        out.append(np.ascontiguousarray(crop))
    return out


Item = tuple[np.ndarray, str, Any]
"""A buffered crop: (pixels, sample key, descriptor to rebuild it from its shard after a restart)."""


class CropShuffler:
    """Shuffle buffer of crops: fills from ``fill()`` (one decoded image's crops per call) and emits them in
    random order once ``SHUFFLE_INITIAL`` (or ``capacity``, if smaller) are in; holds at most about
    ``capacity`` crops (plus the crops of one image)."""

    capacity: int
    warm: int
    items: list[Item]
    owed: float

    def __init__(self, capacity: int, gen: torch.Generator) -> None:
        self.capacity, self.warm = max(1, capacity), max(1, min(capacity, SHUFFLE_INITIAL))
        self.items, self.owed, self._gen = [], 0.0, gen

    def next(self, fill: Callable[[], list[Item]]) -> Item:
        """One crop, drawn uniformly from the buffer."""
        while not (len(self.items) >= self.warm and self.owed >= 1):
            crops = fill()
            self.items.extend(crops)
            if len(self.items) >= self.warm:  # growing: emit half as many as come in, then as many
                self.owed += len(crops) if len(self.items) >= self.capacity else len(crops) / 2
        self.owed -= 1
        j = int(torch.randint(0, len(self.items), (1,), generator=self._gen))
        self.items[j], self.items[-1] = self.items[-1], self.items[j]
        return self.items.pop()
