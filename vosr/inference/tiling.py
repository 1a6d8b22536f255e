"""Overlapping-tile processing with smooth blending, for images larger than the training size.

One mechanism serves the encoder (pixel tiles -> latent tiles), the transformer (latent tiles,
called once per sampler step with the same full-size noise field) and the decoder (latent tiles
-> pixel tiles). Tiles are cut with a fixed overlap, processed ``batch`` at a time (memory is
bounded by the tile size and the batch, not the image) and summed back with raised-cosine
weights that fall off only on edges shared with another tile; the sum is normalised by the
summed weights, so any tile layout reproduces a tile-local operator exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1), half-open, in the input tensor's pixels."""
OnTiles = Callable[[int], object]
"""Called with the number of tiles just processed (e.g. a progress bar's ``update``)."""


@dataclass(frozen=True)
class TileGrid:
    """Tile layout of an (H, W) plane; a box edge inside the plane borders another tile."""

    height: int
    width: int
    overlap: int
    boxes: tuple[Box, ...]

    def __len__(self) -> int:
        return len(self.boxes)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``length`` with at least ``overlap`` shared.

    Starts are multiples of ``align``; the last tile ends at ``length`` (``length`` and ``tile``
    must be multiples of ``align``). A plane no larger than the tile is one tile.
    """
    if tile <= 0 or length <= 0:
        raise ValueError(f"tile size {tile} and length {length} must be positive")
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of the alignment {align}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must lie in [0, tile={tile}); change --overlap")
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


def make_grid(height: int, width: int, tile: int, overlap: int, align: int = 1) -> TileGrid:
    """Tile boxes for an (H, W) plane; ``tile`` is clipped to the plane per axis."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys = tile_starts(height, tile_h, min(overlap, max(tile_h - align, 0)), align)
    xs = tile_starts(width, tile_w, min(overlap, max(tile_w - align, 0)), align)
    boxes = tuple((y, y + tile_h, x, x + tile_w) for y in ys for x in xs)
    return TileGrid(height=height, width=width, overlap=overlap, boxes=boxes)


def _ramp(length: int, ramp: int, fall_start: bool, fall_end: bool) -> Tensor:
    """1-D weight: raised-cosine rise over ``ramp`` samples at shared edges, 1 elsewhere; all > 0."""
    w = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        pos = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp  # (0, 1), never exactly 0
        rise = torch.sin(0.5 * math.pi * pos) ** 2
        if fall_start:
            w[:ramp] = rise
        if fall_end:
            w[length - ramp:] = rise.flip(0)
    return w


def tile_weight(box: Box, height: int, width: int, ramp: int) -> Tensor:
    """(h, w) float64 blending weight of one tile; edges on the plane border stay at 1."""
    y0, y1, x0, x1 = box
    wy = _ramp(y1 - y0, ramp, y0 > 0, y1 < height)
    wx = _ramp(x1 - x0, ramp, x0 > 0, x1 < width)
    return wy[:, None] * wx[None, :]


def tiled_apply(fn: Callable[[Tensor, list[int]], Tensor], x: Tensor, grid: TileGrid, *,
                scale: float = 1.0, batch: int = 4, on_tiles: OnTiles | None = None) -> Tensor:
    """Run ``fn`` on overlapping tiles of ``x`` and blend the results.

    x: (B, C, H, W) with (H, W) = the grid's plane. ``fn(tiles, idx)`` receives the tiles
    ``idx`` stacked tile-major as (len(idx) * B, C, h, w) and returns (len(idx) * B, C', h * scale,
    w * scale) (``scale`` = 1/8 for an encoder, 8 for a decoder). Returns (B, C', H * scale,
    W * scale) in the output's dtype; blending runs in float32. ``on_tiles(k)`` follows each batch.
    """
    if batch < 1:
        raise ValueError(f"tile batch {batch} must be >= 1; change --batch")
    b = x.shape[0]
    ramp = int(round(grid.overlap * scale))  # weights cross-fade over the whole overlap
    out_h, out_w = _scaled(grid.height, scale), _scaled(grid.width, scale)
    acc: Tensor | None = None
    weight_sum = torch.zeros(out_h, out_w, dtype=torch.float32, device=x.device)
    for start in range(0, len(grid), batch):
        idx = list(range(start, min(start + batch, len(grid))))
        tiles = torch.cat([x[:, :, y0:y1, x0:x1] for (y0, y1, x0, x1) in (grid.boxes[i] for i in idx)])
        out = fn(tiles, idx)  # (k*B, C', h', w')
        if acc is None:
            acc = torch.zeros(b, out.shape[1], out_h, out_w, dtype=torch.float32, device=x.device)
        for j, i in enumerate(idx):
            y0, y1, x0, x1 = (_scaled(v, scale) for v in grid.boxes[i])
            piece = out[j * b:(j + 1) * b].float()
            if piece.shape[-2:] != (y1 - y0, x1 - x0):
                raise ValueError(f"tile function returned {tuple(piece.shape[-2:])} for a tile expected "
                                 f"to map to {(y1 - y0, x1 - x0)} (scale {scale})")
            w = tile_weight((y0, y1, x0, x1), out_h, out_w, ramp).to(device=x.device, dtype=torch.float32)
            acc[:, :, y0:y1, x0:x1] += piece * w
            weight_sum[y0:y1, x0:x1] += w
        del out, tiles
        if on_tiles is not None:
            on_tiles(len(idx))
    assert acc is not None  # the grid has at least one box
    return (acc / weight_sum).to(x.dtype if x.is_floating_point() else torch.float32)


def _scaled(value: int, scale: float) -> int:
    scaled = value * scale
    if abs(scaled - round(scaled)) > 1e-6:
        raise ValueError(f"tile coordinate {value} x scale {scale} is not an integer; tiles must align "
                         "to the autoencoder's downsampling factor")
    return int(round(scaled))


class TiledDenoiser:
    """Wrap a VOSR transformer so a sampler step runs on overlapping latent tiles.

    Called like the model: ``(x (B, 2C, H, W), t (B,), sem (B, T, N, D) | None, r (B,) | None)``
    where ``sem[:, j]`` are the semantic tokens of tile ``j`` of ``grid``. Because every
    sampler step blends the tiles' velocities, all tiles follow one shared trajectory from one
    full-size noise field, which keeps seams out. ``on_tiles`` is told of every batch of tiles done.
    """

    def __init__(self, model: Callable[..., Tensor], grid: TileGrid, batch: int = 4,
                 on_tiles: OnTiles | None = None, *, lr_pixels: Tensor | None = None, pixel_scale: int = 1,
                 degradation: Tensor | None = None) -> None:
        """``lr_pixels`` (B, 3, H * pixel_scale, W * pixel_scale): the upsampled LR, cut into the same tiles
        for the LR-pixel branch; ``degradation`` (B, K): scores for every tile of an image."""
        self.model = model
        self.grid = grid
        self.batch = batch
        self.on_tiles = on_tiles
        self.lr_pixels = lr_pixels
        self.pixel_scale = pixel_scale
        self.degradation = degradation

    def _extras(self, idx: list[int], batch: int) -> dict[str, Tensor]:
        """Keyword inputs of tiles ``idx`` for a call of ``batch`` rows per tile (B, or 2B when guided)."""
        out: dict[str, Tensor] = {}
        if self.lr_pixels is not None:
            d = self.pixel_scale
            crops = [self.lr_pixels[:, :, y0 * d:y1 * d, x0 * d:x1 * d] for (y0, y1, x0, x1)
                     in (self.grid.boxes[i] for i in idx)]
            out["lr_pixels"] = torch.cat([c.repeat(batch // c.shape[0], 1, 1, 1) for c in crops])
        if self.degradation is not None:
            out["degradation"] = self.degradation.repeat(len(idx) * batch // self.degradation.shape[0], 1)
        return out

    def __call__(self, x: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None, *,
                 omega: Tensor | None = None) -> Tensor:
        if sem is not None and sem.shape[1] != len(self.grid):
            raise ValueError(f"per-tile semantic tokens have {sem.shape[1]} tiles, the grid {len(self.grid)}")

        def run(tiles: Tensor, idx: list[int]) -> Tensor:
            k = len(idx)
            tile_sem = None if sem is None else sem[:, idx].transpose(0, 1).flatten(0, 1)  # (k*B, N, D)
            tile_r = None if r is None else r.repeat(k)
            extras = self._extras(idx, x.shape[0])
            if omega is not None:  # a guidance-conditioned student (B,) -> (k*B,)
                extras["omega"] = omega.repeat(k)
            if extras:
                return self.model(tiles, t.repeat(k), tile_sem, tile_r, **extras)
            return self.model(tiles, t.repeat(k), tile_sem, tile_r)

        return tiled_apply(run, x, self.grid, scale=1.0, batch=self.batch, on_tiles=self.on_tiles)
