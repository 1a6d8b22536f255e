"""Colour correction of an SR output against the upsampled LR image (as in StableSR, Wang et al. 2023).

* AdaIN: give each output channel the mean and standard deviation of the reference channel.
* Wavelet: keep the output's high frequencies and take the lowest band (colour, shading) of the
  reference, using a 5-level a-trous decomposition with the 3x3 binomial kernel.
Images are (B, 3, H, W) in [0, 1]; the reference must have the same size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COLOR_FIXES: tuple[str, ...] = ("none", "adain", "wavelet")
WAVELET_LEVELS = 5  # StableSR's wavelet_decomposition default


def _check_pair(image: Tensor, reference: Tensor) -> None:
    if image.shape != reference.shape or image.ndim != 4:
        raise ValueError(f"colour fix needs equal (B, C, H, W) shapes, got {tuple(image.shape)} "
                         f"and reference {tuple(reference.shape)}")


def adain_fix(image: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel mean/std of ``reference`` given to ``image`` (B, C, H, W); clamped to [0, 1]."""
    _check_pair(image, reference)
    x, ref = image.float(), reference.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    ref_mean = ref.mean(dim=(2, 3), keepdim=True)
    ref_std = (ref.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return ((x - mean) / std * ref_std + ref_mean).clamp(0, 1).to(image.dtype)


def wavelet_blur(image: Tensor, radius: int) -> Tensor:
    """3x3 binomial blur dilated by ``radius`` (a-trous), replicate-padded; shape is kept."""
    c = image.shape[1]
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=radius)


def wavelet_decompose(image: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """(high, low) with ``high + low == image``: low is the band left after ``levels`` blurs."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = wavelet_blur(low, 2 ** i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_fix(image: Tensor, reference: Tensor, levels: int = WAVELET_LEVELS) -> Tensor:
    """High frequencies of ``image`` + low band of ``reference``; (B, C, H, W), clamped to [0, 1]."""
    _check_pair(image, reference)
    high, _ = wavelet_decompose(image.float(), levels)
    _, low = wavelet_decompose(reference.float(), levels)
    return (high + low).clamp(0, 1).to(image.dtype)


def apply_color_fix(image: Tensor, reference: Tensor, method: str) -> Tensor:
    """Dispatch on ``method`` in ``none | adain | wavelet``."""
    if method == "none":
        return image
    if method == "adain":
        return adain_fix(image, reference)
    if method == "wavelet":
        return wavelet_fix(image, reference)
    raise ValueError(f"unknown colour fix {method!r}; use one of {COLOR_FIXES} (--color-fix)")
