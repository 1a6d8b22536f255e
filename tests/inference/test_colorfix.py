"""Colour correction: properties of AdaIN and wavelet reconstruction on real photos."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.export_helpers import photo
from vosr.images import to_tensor
from vosr.inference.colorfix import adain_fix, apply_color_fix, wavelet_decompose, wavelet_fix


@pytest.fixture
def pair():
    ref = to_tensor(photo(1, 96, 128, 100, 100))  # coffee crop, (1, 3, 96, 128)
    shifted = ref * 0.6 + torch.tensor([0.25, 0.05, 0.15]).view(1, 3, 1, 1)  # colour cast, in range
    return ref, shifted


def test_adain_matches_reference_statistics(pair):
    ref, shifted = pair
    out = adain_fix(shifted, ref)
    assert torch.allclose(out.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=2e-3)
    assert torch.allclose(out.std(dim=(2, 3)), ref.std(dim=(2, 3)), atol=2e-3)
    assert torch.allclose(adain_fix(ref, ref), ref, atol=1e-4)  # already matched: unchanged


def test_wavelet_decomposition_is_exact_and_lowpass(pair):
    ref, _ = pair
    high, low = wavelet_decompose(ref)
    assert torch.allclose(high + low, ref, atol=1e-6)
    assert low.diff(dim=-1).abs().mean() < 0.2 * ref.diff(dim=-1).abs().mean()  # low band is smooth


def test_wavelet_removes_a_colour_cast_and_keeps_detail(pair):
    ref, _ = pair
    cast = ref + torch.tensor([0.1, -0.05, 0.0]).view(1, 3, 1, 1)  # constant offset = lowest band only
    cast = cast.clamp(0, 1)
    fixed = wavelet_fix(cast, ref)
    assert (fixed - ref).abs().mean() < 0.25 * (cast - ref).abs().mean()
    blurred_ref = F.avg_pool2d(ref, 5, 1, 2, count_include_pad=False)  # a detail-less reference
    kept = wavelet_fix(ref, blurred_ref)
    assert kept.diff(dim=-1).abs().mean() > 0.8 * ref.diff(dim=-1).abs().mean()  # output detail survives
    assert torch.equal(wavelet_fix(ref, ref).clamp(0, 1), wavelet_fix(ref, ref))


def test_dispatch_and_errors(pair):
    ref, shifted = pair
    assert apply_color_fix(shifted, ref, "none") is shifted
    assert torch.equal(apply_color_fix(shifted, ref, "adain"), adain_fix(shifted, ref))
    assert torch.equal(apply_color_fix(shifted, ref, "wavelet"), wavelet_fix(shifted, ref))
    with pytest.raises(ValueError, match="colour fix"):
        apply_color_fix(shifted, ref, "histogram")
    with pytest.raises(ValueError, match="shapes"):
        adain_fix(shifted, ref[..., :64])
