"""Batched JPEG compression on the device, compressing as the reference's degradation does.

The Real-ESRGAN pipeline the reference trains with uses a tensor JPEG in its non-differentiable
mode; this is our own implementation of the same arithmetic, so that the LQ statistics match:
- RGB (x255) to YCbCr with the JPEG matrix, chroma subsampled 4:2:0 by a 2x2 box average;
- the image zero-padded to a multiple of 16 (then cropped back);
- 8x8 DCT, quantisation by the standard tables scaled by the libjpeg quality factor
  (``5000 / q`` below 50, ``200 - 2q`` above, over 100; q need not be an integer), rounded *hard*;
- dequantisation, inverse DCT, chroma upsampled back by nearest replication, clamped to [0, 255].
The reference indexes its quantisation tables transposed relative to the DCT's (row, column)
frequencies; we keep that, since it is what the released models saw. kornia's differentiable JPEG
rounds softly, upsamples chroma smoothly and pads by replication: it compresses less (+0.8 to
+1.3 dB PSNR at the same quality) and shifts the chroma statistics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
"""The standard JPEG luminance table (ITU T.81 K.1), rows = vertical frequency."""
_CHROMA = torch.full((8, 8), 99.0)
_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                               dtype=torch.float32)
"""The standard JPEG chrominance table (ITU T.81 K.2)."""
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def quality_factor(quality: Tensor) -> Tensor:
    """libjpeg's table scale for quality (B,) in (0, 100]: ``5000 / q`` below 50, else ``200 - 2q``; over 100."""
    q = quality.float()
    return torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0


def _dct_basis(device: torch.device) -> tuple[Tensor, Tensor]:
    """C[u, x] = cos((2x + 1) u pi / 16) and the orthonormalising alpha_u alpha_v (8, 8)."""
    k = torch.arange(8, dtype=torch.float32, device=device)
    basis = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16)  # (u, x)
    alpha = torch.ones(8, device=device)
    alpha[0] = 1 / math.sqrt(2)
    return basis, alpha[:, None] * alpha[None, :]


def _quantise_blocks(plane: Tensor, table: Tensor, factor: Tensor) -> Tensor:
    """DCT, hard quantisation by ``table x factor`` and back, per 8x8 block of plane (B, H, W), H, W % 8 == 0."""
    b, h, w = plane.shape
    basis, alpha = _dct_basis(plane.device)
    blocks = plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (B, h/8, w/8, 8, 8) spatial (x, y)
    coef = 0.25 * alpha * torch.einsum("ux,bijxy,vy->bijuv", basis, blocks - 128, basis)
    # The reference indexes its tables transposed relative to (u, v): keep that (see the module docstring).
    # A step below 1 (quality > 95) is floored at 1, as libjpeg does; quality 100 would otherwise divide by 0.
    step = (table.t().to(plane.device) * factor.view(b, 1, 1, 1, 1)).clamp(min=1.0)
    coef = torch.round(coef / step) * step
    rec = 0.25 * torch.einsum("ux,bijuv,vy->bijxy", basis, alpha * coef, basis) + 128
    return rec.permute(0, 1, 3, 2, 4).reshape(b, h, w)


def jpeg_compress(img01: Tensor, quality: Tensor) -> Tensor:
    """JPEG-compress each image of ``img01`` (B, 3, H, W) in [0, 1] at its ``quality`` (B,) -> (B, 3, H, W) in [0, 1].

    Runs on ``img01``'s device in float32; not differentiable (hard rounding).
    """
    b, _, h, w = img01.shape
    x = F.pad(img01.float() * 255, (0, -w % 16, 0, -h % 16))  # zero padding to whole 16x16 macroblocks
    shift = torch.tensor([0.0, 128.0, 128.0], device=x.device).view(1, 3, 1, 1)
    ycc = torch.einsum("ck,bkhw->bchw", _RGB_TO_YCC.to(x.device), x) + shift
    factor = quality_factor(quality.to(x.device))
    luma = _quantise_blocks(ycc[:, 0], _LUMA, factor)  # (B, H', W')
    chroma = F.avg_pool2d(ycc[:, 1:], kernel_size=2, stride=2)  # 4:2:0 by box average
    cb = _quantise_blocks(chroma[:, 0], _CHROMA, factor)
    cr = _quantise_blocks(chroma[:, 1], _CHROMA, factor)
    chroma = torch.stack([cb, cr], dim=1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest
    ycc = torch.cat([luma[:, None], chroma], dim=1) - shift
    rgb = torch.einsum("ck,bkhw->bchw", _YCC_TO_RGB.to(x.device), ycc).clamp(0, 255) / 255
    return rgb[:, :, :h, :w]
