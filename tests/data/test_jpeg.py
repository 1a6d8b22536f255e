"""The degradation's JPEG compresses as the reference's does (vosr.data.jpeg)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import real_photos
from vosr.data.jpeg import jpeg_compress, quality_factor

# PSNR (dB, 8-bit) of the reference's JPEG on the (200, 232) top-left crops of astronaut, coffee,
# chelsea and rocket (scikit-image), recorded by running basicsr 1.4.2's DiffJPEG(differentiable=False)
# (the JPEG of the Real-ESRGAN pipeline the reference trains with) on this machine, 2026-12-02.
REFERENCE_PSNR = {
    30: (31.775, 28.750, 30.768, 30.839),
    50: (33.387, 30.167, 32.310, 31.768),
    70: (34.898, 31.666, 33.884, 32.798),
    95: (39.427, 37.061, 40.076, 35.990),
}


def _crops() -> torch.Tensor:
    astro, coffee, chelsea, rocket, _ = real_photos()
    return torch.stack([torch.from_numpy(np.ascontiguousarray(p[:200, :232, :3])).permute(2, 0, 1).float() / 255
                        for p in (astro, coffee, chelsea, rocket)])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    mse = ((a * 255).round() - (b * 255).round()).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(255**2 / mse)).tolist()


@pytest.mark.parametrize("quality", sorted(REFERENCE_PSNR))
def test_psnr_matches_the_reference_jpeg(quality: int) -> None:
    x = _crops()  # 200 x 232: not a multiple of 16, so the padding path runs too
    out = jpeg_compress(x, torch.full((4,), float(quality)))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert _psnr(out, x) == pytest.approx(REFERENCE_PSNR[quality], abs=0.01)


def test_quality_factor_and_extremes() -> None:
    assert quality_factor(torch.tensor([10.0, 50.0, 75.0])).tolist() == pytest.approx([5.0, 1.0, 0.5])
    x = _crops()[:2]
    lossless_ish = jpeg_compress(x, torch.full((2,), 100.0))  # steps floored at 1, as libjpeg: no division by 0
    assert torch.isfinite(lossless_ish).all() and min(_psnr(lossless_ish, x)) > 38  # 4:2:0 chroma bounds it
    # per-image quality within one batch
    mixed = jpeg_compress(x, torch.tensor([30.0, 95.0]))
    torch.testing.assert_close(mixed[0], jpeg_compress(x[:1], torch.tensor([30.0]))[0])
    torch.testing.assert_close(mixed[1], jpeg_compress(x[1:], torch.tensor([95.0]))[0])
