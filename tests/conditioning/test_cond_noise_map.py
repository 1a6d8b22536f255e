"""Region-adaptive condition noise (flow.cond_noise_map, CODSR's RGPA): the map's maths."""
from __future__ import annotations

import torch

from vosr.config.run import FlowConfig
from vosr.method.flow import (
    apply_conditions,
    condition_keep_map,
    draw_conditions,
    gradient_keep_map,
    inference_keep_map,
    sobel_magnitude,
    spherical_noise,
)


def _edge_image() -> torch.Tensor:
    """(1, 3, 32, 32): flat left half, a vertical step at x = 24, stripes in the top-right corner."""
    img = torch.full((1, 3, 32, 32), 0.3)
    img[..., 24:] = 0.8
    img[..., :8, 16:24] = torch.tensor([0.0, 1.0] * 4).repeat_interleave(1)[None, None, None, :]
    return img


def test_sobel_flat_is_zero_and_step_is_half() -> None:
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.all(sobel_magnitude(flat) < 1e-6)
    step = torch.zeros(1, 3, 16, 16)
    step[..., 8:] = 1.0
    g = sobel_magnitude(step)
    assert g.shape == (1, 1, 16, 16)
    assert torch.allclose(g[0, 0, 5, 7:9], torch.tensor([0.5, 0.5]), atol=1e-5)


def test_map_range_shape_and_monotone() -> None:
    img = torch.rand(3, 3, 32, 32)
    img[1] = 0.5  # a flat image
    a = gradient_keep_map(img, (8, 8), 0.8, 0.99)
    assert a.shape == (3, 1, 8, 8)
    assert a.min() >= 0.8 - 1e-6 and a.max() <= 0.99 + 1e-6
    assert torch.all(a[1] == 0.99)  # flat -> a_max everywhere
    assert torch.isclose(a[0].min(), torch.tensor(0.8))  # the strongest gradient gets a_min
    # Monotone (decreasing) in the pooled gradient magnitude within each image.
    g = torch.nn.functional.interpolate(sobel_magnitude(img), size=(8, 8), mode="area")
    for i in (0, 2):
        order = torch.argsort(g[i].flatten())
        assert torch.all(a[i].flatten()[order].diff() <= 1e-7)


def test_textured_regions_get_more_noise() -> None:
    a = gradient_keep_map(_edge_image(), (8, 8), 0.5, 1.0)[0, 0]
    assert a[4, 1] == 1.0  # flat
    assert a[4, 5] < 1.0 and a[1, 4] < 1.0  # the step and the stripes


def test_none_keeps_per_sample_scalar_exactly() -> None:
    cfg = FlowConfig()
    lq = torch.randn(4, 4, 8, 8)
    assert condition_keep_map(torch.rand(4, 3, 64, 64), (8, 8), cfg) is None
    draws = draw_conditions(lq, cfg, torch.Generator().manual_seed(0))
    a = draws.keep.view(-1, 1, 1, 1)
    expected = a * lq + torch.sqrt(1 - a * a) * draws.noise
    got = apply_conditions(lq, None, draws)
    weak = draws.weak.view(-1, 1, 1, 1)
    assert torch.equal(torch.where(weak, got.cond, expected), torch.where(weak, got.cond, got.cond))
    assert torch.equal(got.cond[~draws.weak], expected[~draws.weak])
    assert torch.equal(apply_conditions(lq, None, draws, keep_map=None).cond, got.cond)


def test_spatial_keep_map_in_spherical_noise() -> None:
    cfg = FlowConfig(cond_noise_map="gradient", cond_noise_a_min=0.6, cond_noise_a_max=1.0)
    lq, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    keep = condition_keep_map(torch.rand(2, 3, 64, 64), (8, 8), cfg)
    out = spherical_noise(lq, keep, noise)
    assert out.shape == lq.shape
    assert torch.allclose(out, keep * lq + torch.sqrt(1 - keep ** 2) * noise)
    ones = torch.ones(2, 1, 8, 8)
    assert torch.equal(spherical_noise(lq, ones, noise), lq)  # a = 1: the clean LQ latent


def test_inference_strength() -> None:
    keep = torch.tensor([0.5, 0.9, 1.0]).view(1, 1, 1, 3)
    assert torch.equal(inference_keep_map(keep, 0.0), torch.ones_like(keep))
    assert torch.allclose(inference_keep_map(keep, 1.0), keep)
    assert torch.allclose(inference_keep_map(keep, 0.5), torch.tensor([0.75, 0.95, 1.0]).view(1, 1, 1, 3))
