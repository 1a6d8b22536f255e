"""Image files in and out, one converter for the whole project (inference, evaluation, packing).

``to_rgb8`` turns any decoded image (8/16/32-bit, float, grayscale, palette, RGBA, CMYK) into an
8-bit RGB array plus an optional alpha plane; ``composite_on_white`` flattens the alpha where a
plain RGB image is needed (training targets: ``rgb8_on_white``, ``rgb8_crop``, used by packing and by
the training stream alike). ``read_image`` opens a file with that converter
(EXIF-rotated) and raises ``ImageError`` with a one-line reason for files it cannot use
(corrupt, truncated, too small, too large), so a folder run can skip them and carry on.
``save_image`` writes atomically (temporary name, then rename) so an interrupted run never
leaves a half-written output that a later ``skip existing`` would trust.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported by the tensor helpers only: pack workers never load it
    from torch import Tensor

logger = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


class ImageError(ValueError):
    """An input file cannot be used; the message says why."""


@dataclass
class LoadedImage:
    """An input image as 8-bit planes."""

    rgb: np.ndarray
    """(H, W, 3) uint8."""
    alpha: np.ndarray | None
    """(H, W) uint8 when the file had transparency, else None."""
    mode: str
    """The file's PIL mode, for messages."""


def list_images(path: str | Path, flag: str = "-i/--input") -> list[Path]:
    """One file, or the image files (by extension) directly inside a folder, sorted by name.

    ``flag`` names the CLI option in the error for a missing path.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a file nor a folder ({flag})")
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Single-channel 16/32-bit or float image -> (H, W) uint8 by its nominal range.

    ``I;16*`` (and ``I`` images with values above 255) map 0..65535 to 0..255 (÷257, rounded);
    ``F`` images in [0, 1] scale by 255; anything outside 0..255 afterwards is clipped.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    elif img.mode.startswith("I;16") or arr.max(initial=0.0) > 255:
        arr = arr / 257.0  # 0-65535 -> 0-255
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_rgb8(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded image -> ((H, W, 3) uint8 RGB, (H, W) uint8 alpha or None when fully opaque/absent)."""
    if img.mode in HIGH_DEPTH_MODES:
        gray = _high_depth_to_uint8(img)
        return np.repeat(gray[:, :, None], 3, axis=2), None
    if has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[:, :, 3]
        return np.ascontiguousarray(rgba[:, :, :3]), (None if alpha.min() == 255 else np.ascontiguousarray(alpha))
    return np.asarray(img.convert("RGB")), None


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency (an alpha band or a palette/gray transparency entry)."""
    return img.mode in ALPHA_MODES or "transparency" in img.info


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) uint8 over a white background by (H, W) uint8 ``alpha`` (None: unchanged)."""
    if alpha is None:
        return rgb
    a = alpha.astype(np.float32)[:, :, None] / 255.0
    return np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


@functools.cache
def jpeg_codec():
    """libjpeg-turbo's TurboJPEG API (PyTurboJPEG + libturbojpeg), or None when either is missing.

    It decodes the same pixels as PIL (both run libjpeg-turbo's accurate integer IDCT and fancy upsampling:
    identical on all 55 JPEG wallpapers) about 1.5x faster, and cuts JPEGs losslessly on the MCU grid.
    """
    try:
        from turbojpeg import TurboJPEG

        return TurboJPEG()
    except (ImportError, OSError, RuntimeError) as e:
        logger.info("no TurboJPEG (%s: %s): JPEGs are decoded by PIL and tiles re-encoded; install PyTurboJPEG "
                    "and libturbojpeg0 (scripts/setup.sh)", type(e).__name__, e)
        return None


def rgb8_on_white(img: Image.Image) -> np.ndarray:
    """A decoded image -> (H, W, 3) uint8 RGB, alpha composited on white: what a training target holds."""
    if img.mode == "RGB" and not has_alpha(img):
        return np.asarray(img)
    return composite_on_white(*to_rgb8(img))


def rgb8_crop(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """``rgb8_on_white(img)[top:bottom, left:right]`` for ``box = (left, top, right, bottom)``, converting only
    the box where the conversion works pixel by pixel (every mode but the high-depth ones, whose scale
    ``to_rgb8`` takes from the whole image)."""
    if img.mode in HIGH_DEPTH_MODES:
        left, top, right, bottom = box
        return rgb8_on_white(img)[top:bottom, left:right]
    return rgb8_on_white(img.crop(box))


def read_image(path: str | Path, *, min_side: int = 8, max_pixels: int | None = None) -> LoadedImage:
    """Read ``path`` as 8-bit RGB (+ alpha); raise ``ImageError`` for unusable files.

    ``max_pixels`` bounds width x height, checked from the header before decoding.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(path) as img:
                w, h = img.size
                if min(w, h) < min_side:
                    raise ImageError(f"{w}x{h} is smaller than {min_side} px on a side")
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(f"{w}x{h} exceeds --max-pixels={max_pixels}")
                mode = img.mode
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb, alpha = to_rgb8(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError("not a recognised image file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"corrupt or truncated ({e})") from e
    return LoadedImage(rgb=rgb, alpha=alpha, mode=mode)


def to_tensor(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(img01: Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 (rounded)."""
    import torch

    if img01.ndim == 4:
        img01 = img01[0]
    return (img01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resize_bicubic(img01: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 3, h, w) in [0, 1] -> (B, 3, H, W) = ``size``, each image resized by PIL's bicubic in 8 bits.

    How the reference upsamples the LR input at inference (PIL's kernel, a = -0.5, differs from
    torch's a = -0.75 by several levels on edges); also the bicubic baseline of the benchmarks.
    """
    import torch

    out = []
    for img in img01:
        pil = Image.fromarray(to_uint8(img)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        out.append(to_tensor(np.asarray(pil)))
    return torch.cat(out).to(img01.device)


FLAT_DETAIL = 0.006
"""``detail_level`` below which a crop counts as flat (blank, sky, walls, out-of-focus background):
neighbouring pixels of the LR-sized image differ by under ~1.5 grey levels on average. About half
of random crops of the installed wallpapers fall below it; photos of objects rarely do."""


def detail_level(images: Tensor, pool: int = 4) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B,) mean absolute difference of neighbouring luma values after
    ``pool`` x ``pool`` averaging (the LR scale: pixel noise and JPEG artefacts do not count)."""
    import torch.nn.functional as F

    x = F.avg_pool2d(images.float(), pool) if pool > 1 and min(images.shape[-2:]) >= 2 * pool else images.float()
    luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)  # (B, h, w)
    dx = (luma[:, :, 1:] - luma[:, :, :-1]).abs().mean((1, 2))
    dy = (luma[:, 1:] - luma[:, :-1]).abs().mean((1, 2))
    return (dx + dy) / 2


def pick_with_content(images: Tensor, count: int, pool: int = 4, threshold: float = FLAT_DETAIL) -> list[int]:
    """Indices of ``count`` of ``images`` (B, 3, H, W): those with content in their order, then, if
    too few, the most detailed flat ones (``pool``: see ``detail_level``)."""
    level = detail_level(images, pool).tolist()
    keep = [i for i, v in enumerate(level) if v >= threshold]
    flat = sorted((i for i, v in enumerate(level) if v < threshold), key=lambda i: -level[i])
    return (keep + flat)[:count]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def make_grid(rows: list[list[Tensor]], gap: int = 2, *, labels: list[str] | None = None,
              title: str | None = None, min_panel: int = 0) -> np.ndarray:
    """Rows of equally sized (3, H, W) images in [0, 1] -> one (H', W', 3) uint8 picture, white gaps.

    ``labels`` name the columns above the first row and ``title`` heads the picture. Panels whose
    short side is under ``min_panel`` are enlarged by an integer factor with nearest neighbour, so
    small crops stay readable and no pixel is invented.
    """
    from PIL import ImageDraw

    h, w = rows[0][0].shape[-2:]
    zoom = max(1, -(-min_panel // min(h, w)))
    ph, pw = h * zoom, w * zoom
    cols = max(len(r) for r in rows)
    font = _font(max(11, min(20, pw // 11)))
    line = getattr(font, "size", 11) + 8 if labels or title else 0
    top = line * (bool(labels) + bool(title))
    canvas = Image.new("RGB", (cols * (pw + gap) - gap, top + len(rows) * (ph + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width // 2, line // 2), title, fill="black", font=font, anchor="mm")
    for j, label in enumerate(labels or []):
        while len(label) > 1 and draw.textlength(label, font=font) > pw - 4:
            label = label[:-2] + "."  # shorten until it fits its column
        draw.text((j * (pw + gap) + pw // 2, top - line // 2), label, fill="black", font=font, anchor="mm")
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            panel = to_uint8(img).repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas.paste(Image.fromarray(panel), (j * (pw + gap), top + i * (ph + gap)))
    return np.asarray(canvas)


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 alpha -> bicubic to (H, W) = ``size``."""
    return np.asarray(Image.fromarray(alpha).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def save_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None,
               text: dict[str, str] | None = None) -> Path:
    """Write (H, W, 3) uint8 (+ (H, W) alpha -> RGBA) atomically; the format follows the suffix.

    ``text``: PNG text chunks (e.g. ``OUTPUT_MARKER``), written only for ``.png`` files.
    """
    path = Path(path)
    img = Image.fromarray(rgb)
    if alpha is not None:
        img.putalpha(Image.fromarray(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    extra = {}
    if text and path.suffix.lower() == ".png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        extra["pnginfo"] = info
    try:
        img.save(tmp, **extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


OUTPUT_MARKER = {"vosr-output": "1"}
"""PNG text chunk of every image ``vosr.infer`` writes: a folder's own outputs are never taken as inputs."""


def is_vosr_output(path: str | Path) -> bool:
    """Whether ``path`` is a PNG written by ``vosr.infer`` (it carries ``OUTPUT_MARKER``); reads the header only."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", None) or img.info
            return all(text.get(k) == v for k, v in OUTPUT_MARKER.items())
    except (OSError, ValueError, SyntaxError):
        return False
