"""The LR-pixel branch and the degradation embedding inside VOSRDiT: neutral at init, shapes, reach."""
from __future__ import annotations

import pytest
import torch

from vosr.config import ModelConfig
from vosr.data.degrade import SCORE_NAMES
from vosr.models.conditioning import LRPixelBranch, lr_to_token_grid, lr_unshuffle_factor
from vosr.models.dit import build_dit

K = len(SCORE_NAMES)


def _pair(**kw: object):
    """A plain tiny model and one with the modules of ``kw``, sharing every common weight (random)."""
    torch.manual_seed(0)
    plain = build_dit(ModelConfig(preset="tiny"), latent_channels=4, semantic_dim=32, input_size=16)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.05)
    full = build_dit(ModelConfig(preset="tiny", **kw), latent_channels=4, semantic_dim=32, input_size=16,
                     lr_unshuffle=2)
    missing, unexpected = full.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    return plain, full


def test_unshuffle_factor_and_grid() -> None:
    assert lr_unshuffle_factor(16, 4) == 4  # SD VAE (8) x patch 2, x4 SR: LR pixels per token
    assert lr_unshuffle_factor(2, 4) == 1  # pixel space, patch 2
    x = torch.rand(2, 3, 64, 48)
    y = lr_to_token_grid(x, (8, 6), 2)
    assert y.shape == (2, 12, 8, 6)
    assert torch.allclose(y[:, :3].mean(), x.mean(), atol=0.05)


@pytest.mark.parametrize("kw", [dict(lr_pixel_branch=True), dict(lr_pixel_branch=True, lr_pixel_blocks=2),
                                dict(degradation_condition=True, degradation_estimator=True),
                                dict(lr_pixel_branch=True, degradation_condition=True)])
def test_new_modules_start_neutral(kw: dict) -> None:
    plain, full = _pair(**kw)
    x, t, z = torch.randn(2, 8, 16, 12), torch.rand(2), torch.randn(2, 5, 32)
    lr = torch.rand(2, 3, 16, 12)  # pixel space (d = 1): the upsampled LR of this latent
    ref = plain(x, t, z)
    out = full(x, t, z, degradation=torch.rand(2, K), lr_pixels=lr)
    assert torch.equal(out, ref)
    assert torch.equal(full(x, t, z), ref)  # and without the optional inputs


def test_branch_acts_once_trained_and_reaches_k_blocks() -> None:
    _, full = _pair(lr_pixel_branch=True, lr_pixel_blocks=1)
    torch.nn.init.normal_(full.lr_branch.heads.weight, std=0.05)
    x, t, z = torch.randn(2, 8, 16, 16), torch.rand(2), torch.randn(2, 5, 32)
    lr = torch.rand(2, 3, 16, 16)
    out = full(x, t, z, lr_pixels=lr)
    assert out.shape == (2, 4, 16, 16) and not torch.equal(out, full(x, t, z))
    assert len(full.lr_branch(lr, (8, 8), torch.randn(2, 64))) == 2
    out.abs().sum().backward()
    assert full.lr_branch.body[0].weight.grad.abs().sum() > 0


def test_zero_init_branch_gets_gradients() -> None:
    _, full = _pair(lr_pixel_branch=True, degradation_condition=True)
    x, t, z = torch.randn(2, 8, 16, 16), torch.rand(2), torch.randn(2, 5, 32)
    torch.nn.init.normal_(full.final_layer.linear.weight, std=0.05)  # so the output depends on the tokens
    full(x, t, z, degradation=torch.rand(2, K), lr_pixels=torch.rand(2, 3, 16, 16)).pow(2).sum().backward()
    assert full.lr_branch.heads.weight.grad.abs().sum() > 0
    assert full.degradation_embed.mlp[2].weight.grad.abs().sum() > 0


def test_return_degradation() -> None:
    _, full = _pair(degradation_condition=True, degradation_estimator=True)
    x, t, z = torch.randn(2, 8, 16, 16), torch.rand(2), torch.randn(2, 5, 32)
    out, est = full(x, t, z, return_degradation=True)
    assert out.shape == (2, 4, 16, 16) and est.shape == (2, K)
    assert torch.equal(est, full.estimate_degradation(z))


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="degradation_estimator"):
        build_dit(ModelConfig(preset="tiny", degradation_condition=True, degradation_estimator=True),
                  latent_channels=4, semantic_dim=None, input_size=16)
    with pytest.raises(ValueError, match="degradation_condition"):
        ModelConfig(degradation_estimator=True)
    with pytest.raises(ValueError, match="lr_pixel_blocks"):
        build_dit(ModelConfig(preset="tiny", lr_pixel_branch=True, lr_pixel_blocks=3), latent_channels=4,
                  semantic_dim=None, input_size=16)


def test_branch_module_alone() -> None:
    branch = LRPixelBranch(16, 2, hidden=8, reach=0)
    branch.reset_parameters()
    (scale, shift), = branch(torch.rand(1, 3, 8, 8), (2, 2), torch.randn(1, 16))
    assert scale.shape == shift.shape == (1, 4, 16) and torch.all(scale == 0) and torch.all(shift == 0)


def test_tiler_cuts_the_lr_tile_too() -> None:
    """A tile-local model of the LR pixels gives the same result tiled and whole."""
    from vosr.inference.tiling import TiledDenoiser, make_grid

    def model(x, t, sem, r=None, *, lr_pixels=None, degradation=None):
        pooled = torch.nn.functional.avg_pool2d(lr_pixels, 4)  # (B, 3, h, w) on the latent grid
        return pooled[:, :1] * (1 + degradation[:, :1, None, None]) + 0 * x[:, :1]

    x, lr = torch.randn(2, 8, 16, 24), torch.rand(2, 3, 64, 96)
    deg = torch.rand(2, K)
    whole = model(x, None, None, lr_pixels=lr, degradation=deg)
    grid = make_grid(16, 24, 8, 4, align=2)
    assert len(grid) > 1
    tiled = TiledDenoiser(model, grid, batch=3, lr_pixels=lr, pixel_scale=4, degradation=deg)(x, torch.rand(2), None)
    torch.testing.assert_close(tiled, whole)
    # a guided (2B) call: the B extras follow both halves
    tiled2 = TiledDenoiser(model, grid, batch=2, lr_pixels=lr, pixel_scale=4, degradation=deg)(
        torch.cat([x, x]), torch.rand(4), None)
    torch.testing.assert_close(tiled2, torch.cat([whole, whole]))
