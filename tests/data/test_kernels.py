"""Blur kernel families and the per-image sampler (vosr/data/kernels.py)."""
from __future__ import annotations

import math

import pytest
import torch

from vosr.config import core
from vosr.config.degradation import DegradationConfig
from vosr.data import kernels as K

N, SIZE = 6, 21


@pytest.fixture
def cfg() -> DegradationConfig:
    return core.load(DegradationConfig, "configs/degradation/realesrgan.yaml")


def _params(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sx = K.uniform(N, 0.2, 3.0, g)
    sy = K.uniform(N, 0.2, 3.0, g)
    theta = K.uniform(N, -math.pi, math.pi, g)
    beta = K.uniform(N, 0.5, 4.0, g)
    return sx, sy, theta, beta


def _families() -> dict[str, torch.Tensor]:
    sx, sy, theta, beta = _params()
    return {
        "iso": K.isotropic_gaussian_kernels(sx, SIZE),
        "aniso": K.gaussian_kernels(sx, sy, theta, SIZE),
        "generalized": K.generalized_gaussian_kernels(sx, sy, theta, beta, SIZE),
        "plateau": K.plateau_kernels(sx, sy, theta, beta.clamp(1, 2), SIZE),
        "sinc": K.circular_lowpass_kernels(torch.linspace(math.pi / 5, math.pi, N, dtype=torch.float64), SIZE),
        "pulse": K.pulse_kernels(N, SIZE),
    }


@pytest.mark.parametrize("family", ["iso", "aniso", "generalized", "plateau", "sinc", "pulse"])
def test_every_family_is_batched_and_sums_to_one(family: str) -> None:
    kernels = _families()[family]
    assert kernels.shape == (N, SIZE, SIZE)
    assert torch.isfinite(kernels).all()
    torch.testing.assert_close(kernels.sum(dim=(-2, -1)), torch.ones(N, dtype=kernels.dtype), atol=1e-9, rtol=0)
    if family != "sinc":
        assert (kernels >= 0).all()


def test_isotropic_gaussian_matches_separable_closed_form() -> None:
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    kernels = K.isotropic_gaussian_kernels(sigma, SIZE)
    ax = torch.arange(SIZE, dtype=torch.float64) - SIZE // 2
    for s, kern in zip(sigma, kernels, strict=True):
        g1 = torch.exp(-ax ** 2 / (2 * s ** 2))
        ref = torch.outer(g1, g1) / torch.outer(g1, g1).sum()
        torch.testing.assert_close(kern, ref)
        # The measured variance along x matches sigma^2 once the grid resolves the kernel (sigma >= 1)
        # and the window holds > 5 sigma.
        var_x = (kern.sum(0) * ax ** 2).sum()
        if s >= 1:
            assert abs(var_x.item() - s.item() ** 2) < 1e-3


def test_anisotropic_rotation_by_quarter_turn_swaps_axes() -> None:
    sx = torch.tensor([0.7, 2.5], dtype=torch.float64)
    sy = torch.tensor([2.0, 0.4], dtype=torch.float64)
    rotated = K.gaussian_kernels(sx, sy, torch.full((2,), math.pi / 2, dtype=torch.float64), SIZE)
    swapped = K.gaussian_kernels(sy, sx, torch.zeros(2, dtype=torch.float64), SIZE)
    torch.testing.assert_close(rotated, swapped)
    # Wider along x when sigma_x > sigma_y and theta = 0.
    wide = K.gaussian_kernels(sx[1:], sy[1:], torch.zeros(1, dtype=torch.float64), SIZE)[0]
    ax = torch.arange(SIZE, dtype=torch.float64) - SIZE // 2
    assert (wide.sum(0) * ax ** 2).sum() > 10 * (wide.sum(1) * ax ** 2).sum()


def test_generalized_beta_one_is_gaussian_and_plateau_is_flat_topped() -> None:
    sx, sy, theta, _ = _params(1)
    ones = torch.ones(N, dtype=torch.float64)
    torch.testing.assert_close(K.generalized_gaussian_kernels(sx, sy, theta, ones, SIZE),
                               K.gaussian_kernels(sx, sy, theta, SIZE))
    sigma = torch.full((1,), 3.0, dtype=torch.float64)
    plateau = K.plateau_kernels(sigma, sigma, torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0,
                                dtype=torch.float64), SIZE)[0]
    gauss = K.isotropic_gaussian_kernels(sigma, SIZE)[0]
    c = SIZE // 2
    # A plateau kernel stays near its peak for longer than a Gaussian of the same sigma.
    assert plateau[c, c + 2] / plateau[c, c] > gauss[c, c + 2] / gauss[c, c]


def test_sinc_rings_and_low_cutoff_is_wider() -> None:
    cutoff = torch.tensor([math.pi / 5, math.pi / 2], dtype=torch.float64)
    sinc = K.circular_lowpass_kernels(cutoff, SIZE)
    assert (sinc < 0).any(dim=(-2, -1)).all(), "a sinc kernel must have negative lobes (ringing)"
    c = SIZE // 2
    assert sinc[0, c, c] < sinc[1, c, c], "a lower cutoff spreads the kernel"


def test_crop_to_sizes_zeroes_outside_each_window() -> None:
    sigma = torch.full((3,), 3.0, dtype=torch.float64)
    sizes = torch.tensor([7, 13, 21])
    cropped = K.crop_to_sizes(K.isotropic_gaussian_kernels(sigma, SIZE), sizes)
    for kern, k in zip(cropped, sizes.tolist(), strict=True):
        lo, hi = (SIZE - k) // 2, (SIZE + k) // 2
        assert kern[:lo].abs().sum() == 0 and kern[hi:].abs().sum() == 0
        assert kern[:, :lo].abs().sum() == 0 and kern[:, hi:].abs().sum() == 0
        assert kern[lo:hi, lo:hi].min() > 0
        torch.testing.assert_close(kern.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_sampler_draws_per_image_and_reproducibly(cfg: DegradationConfig) -> None:
    a = K.sample_blur_kernels(cfg.blur1, 16, torch.Generator().manual_seed(3))
    b = K.sample_blur_kernels(cfg.blur1, 16, torch.Generator().manual_seed(3))
    c = K.sample_blur_kernels(cfg.blur1, 16, torch.Generator().manual_seed(4))
    assert a.shape == (16, max(cfg.blur1.kernel_sizes), max(cfg.blur1.kernel_sizes)) and a.dtype == torch.float32
    torch.testing.assert_close(a.sum(dim=(-2, -1)), torch.ones(16), atol=1e-5, rtol=0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    flat = a.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i + 1, 16))


def test_sampler_switches(cfg: DegradationConfig) -> None:
    g = torch.Generator().manual_seed(0)
    pulse = K.pulse_kernels(8, SIZE).float()
    cfg.blur2.prob = 0.0
    assert torch.equal(K.sample_blur_kernels(cfg.blur2, 8, g), pulse)
    cfg.blur1.enabled = False
    assert torch.equal(K.sample_blur_kernels(cfg.blur1, 8, g), pulse)
    cfg.blur1.enabled, cfg.blur1.sinc_prob = True, 1.0
    sinc = K.sample_blur_kernels(cfg.blur1, 8, g)
    assert (sinc < 0).any(dim=(-2, -1)).float().mean() > 0.5
    final = K.sample_final_sinc_kernels(8, [7, 21], (1.0, 3.0), 0.0, g)
    assert torch.equal(final, pulse)
