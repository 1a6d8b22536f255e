"""Tiled encode -> transformer -> decode: layout, exactness for local operators, no seams."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.export_helpers import make_export, make_local_export, photo
from vosr.images import to_tensor
from vosr.inference.pipeline import TileOptions, load_pipeline
from vosr.inference.tiling import make_grid, tile_starts, tile_weight, tiled_apply


@pytest.mark.parametrize("length,tile,overlap,align", [(100, 32, 8, 1), (96, 32, 8, 4), (64, 64, 8, 2),
                                                       (40, 64, 8, 2), (130, 48, 16, 2)])
def test_tile_starts_cover_with_overlap(length, tile, overlap, align):
    tile = min(tile, length)
    starts = tile_starts(length, tile, min(overlap, tile - align), align)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(s % align == 0 for s in starts)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    if len(starts) > 1:
        assert min(a + tile - b for a, b in zip(starts, starts[1:])) >= min(overlap, tile - align)


def test_bad_tile_settings_raise():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)
    with pytest.raises(ValueError, match="multiples"):
        tile_starts(99, 32, 8, align=2)


def test_weights_positive_and_flat_on_plane_border():
    w = tile_weight((0, 32, 16, 48), 64, 48, ramp=8)
    assert w.shape == (32, 32) and (w > 0).all()
    # top and right edges lie on the plane border: flat; left and bottom edges are shared: ramps
    assert torch.all(w[0, 8:] == 1) and torch.all(w[0, :8].diff() > 0)
    assert torch.all(w[:24, -1] == 1) and torch.all(w[24:, -1].diff() < 0)
    # two tiles overlapping by exactly the ramp cross-fade to a constant sum
    left, right = tile_weight((0, 1, 0, 24), 1, 40, 8), tile_weight((0, 1, 16, 40), 1, 40, 8)
    total = torch.zeros(40, dtype=torch.float64)
    total[:24] += left[0]
    total[16:] += right[0]
    assert torch.allclose(total, torch.ones(40, dtype=torch.float64))


def test_identity_and_local_operator_match_untiled():
    x = to_tensor(photo(1, 72, 100))  # (1, 3, 72, 100)
    grid = make_grid(72, 100, 32, 12)
    seen = []

    def ident(tiles, idx):
        seen.append(tuple(tiles.shape))
        return tiles

    assert torch.allclose(tiled_apply(ident, x, grid, batch=3), x, atol=1e-6)
    assert all(s[0] <= 3 and s[-2] <= 32 and s[-1] <= 32 for s in seen)  # memory bounded by tile x batch
    kernel = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(0)) / 9

    def blur(t):
        return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)

    tiled = tiled_apply(lambda t, _: blur(t), x, grid, batch=4)
    full = blur(x)
    interior_err = (tiled - full).abs()
    assert interior_err.max() < 0.02 and interior_err.mean() < 1e-3


def test_scaled_tiles_encoder_decoder_shapes():
    x = torch.rand(2, 3, 64, 96)
    grid = make_grid(64, 96, 32, 8, align=4)
    down = tiled_apply(lambda t, _: F.pixel_unshuffle(t, 4), x, grid, scale=0.25)
    assert torch.allclose(down, F.pixel_unshuffle(x, 4), atol=1e-6)
    up = tiled_apply(lambda t, _: F.pixel_shuffle(t, 4), down, make_grid(16, 24, 8, 2), scale=4)
    assert torch.allclose(up, x, atol=1e-6)


def test_pipeline_tiled_equals_untiled_for_local_model(tmp_path):
    pipe = load_pipeline(make_local_export(tmp_path / "local.safetensors"))
    lr = to_tensor(photo(0, 40, 52, 100, 150))  # -> 160 x 208 output, padded to 8
    full = pipe.upscale(lr, steps=3, guidance=0.5, tiles=TileOptions(tile=0, ae_tile=0))
    tiles = TileOptions(tile=64, overlap=16, ae_tile=48, ae_overlap=16, batch=3)
    assert len(pipe.latent_grid((40, 52), tiles)) > 4
    tiled = pipe.upscale(lr, steps=3, guidance=0.5, tiles=tiles)
    assert full.shape == tiled.shape == (1, 3, 160, 208)
    assert (full - tiled).abs().max() < 1e-4


def _band_mask(size: int, edges: list[int], width: int) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    for e in edges:
        mask[max(0, e - width):e + width] = True
    return mask


def test_no_seams_with_global_attention_model(tmp_path):
    pipe = load_pipeline(make_export(tmp_path / "m.safetensors"))
    lr = to_tensor(photo(2, 48, 64, 60, 120))  # -> 192 x 256
    full = pipe.upscale(lr, steps=4, tiles=TileOptions(tile=0, ae_tile=0))
    tiles = TileOptions(tile=96, overlap=32, batch=4)
    tiled = pipe.upscale(lr, steps=4, tiles=tiles)
    err = (full - tiled).abs().mean(dim=(0, 1))  # (H, W)
    grid = pipe.latent_grid((48, 64), tiles)
    d = pipe.autoencoder.downsample
    ys = sorted({b[0] * d for b in grid.boxes if b[0]} | {b[1] * d for b in grid.boxes if b[1] < 48})
    xs = sorted({b[2] * d for b in grid.boxes if b[2]} | {b[3] * d for b in grid.boxes if b[3] < 64})
    assert ys and xs
    border = _band_mask(192, ys, 2)[:, None] | _band_mask(256, xs, 2)[None, :]
    ratio = err[border].mean() / err[~border].mean()
    assert ratio < 1.5, f"tile borders err {err[border].mean():.4f} vs interior {err[~border].mean():.4f}"
    # and no step across a seam: the output's jump at tile edges is like its jumps elsewhere
    jump = (tiled[..., :, 1:] - tiled[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,)
    at_edges = torch.stack([jump[x - 1] for x in xs]).mean()
    assert at_edges < 2.0 * jump.mean()


def _context_model(x_in: torch.Tensor, t: torch.Tensor, sem, r=None) -> torch.Tensor:
    """A velocity with a per-tile global term (the tile's mean condition): hard-cut tiles would
    disagree at every edge, so this exposes seams that a real model's tile context can cause."""
    cond, x_t = x_in.chunk(2, dim=1)
    return 0.5 * x_t - 2.0 * cond.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1) + 0.1 * cond


def _edge_jump_ratio(err: torch.Tensor, grid, axis_len: int) -> float:
    """Mean |step| of the row-averaged signed error at tile x-edges over its median |step|."""
    xs = sorted({b[2] for b in grid.boxes if b[2]} | {b[3] for b in grid.boxes if b[3] < axis_len})
    profile = err.mean(dim=(0, 2))  # (C, W)
    jump = (profile[:, 1:] - profile[:, :-1]).abs().mean(0)  # (W-1,)
    return float(torch.stack([jump[x - 1] for x in xs]).mean() / jump.median())


def test_blending_removes_steps_that_hard_tiles_leave():
    from vosr.inference.tiling import TiledDenoiser
    from vosr.method.flow import sample_euler

    z_lq = F.pixel_unshuffle(to_tensor(photo(0, 192, 256, 0, 100)) * 2 - 1, 4)  # (1, 48, 48, 64)
    noise = torch.randn(z_lq.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=4, guidance=1.0, weak_anchor=0.15)
    full = sample_euler(_context_model, z_lq, None, noise, **kwargs)
    hard_grid = make_grid(48, 64, 24, 0, align=2)
    soft_grid = make_grid(48, 64, 24, 12, align=2)
    hard = sample_euler(TiledDenoiser(_context_model, hard_grid), z_lq, None, noise, **kwargs)
    soft = sample_euler(TiledDenoiser(_context_model, soft_grid), z_lq, None, noise, **kwargs)
    hard_ratio = _edge_jump_ratio(hard - full, hard_grid, 64)
    soft_ratio = _edge_jump_ratio(soft - full, soft_grid, 64)
    assert hard_ratio > 10, hard_ratio  # the measure does see seams
    assert soft_ratio < 3, soft_ratio
