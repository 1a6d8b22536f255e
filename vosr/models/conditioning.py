"""Optional conditioning modules of the VOSR transformer, all off by default and neutral at init.

* ``LRPixelBranch`` (CODSR's LQ-guided feature modulation): the upsampled LR pixels, area-resized and
  pixel-unshuffled onto the token grid, give per-token ``(gamma, beta)`` through a small conv stack; a
  time-aware SFT ``h (1 + lambda(t) gamma) + lambda(t) beta`` modulates the patch-embedded tokens (and,
  with ``reach`` k, the outputs of the first k blocks). The (gamma, beta) heads start at zero.
* ``DegradationEmbed`` (S3Diff): an MLP of the per-image degradation scores in [0, 1] added to the time
  conditioning; its last layer starts at zero. Rows of NaN mean "no scores" (dropped) and add nothing.
* ``DegradationHead``: a regressor of those scores from the semantic tokens (mean-pooled), so inference
  works without user-given scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lr_unshuffle_factor(pixels_per_token: int, scale: int) -> int:
    """Pixel-unshuffle factor of the LR branch: LR pixels per token side, at least 1.

    A token covers ``pixels_per_token`` (autoencoder downsampling x patch size) pixels of the upsampled
    LR, i.e. ``pixels_per_token / scale`` pixels of the LR itself.
    """
    return max(1, pixels_per_token // max(1, scale))


def lr_to_token_grid(lr_up01: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """(B, 3, H, W) upsampled LR -> (B, 3 f^2, h, w): area-resized to (h f, w f), then pixel-unshuffled."""
    size = (grid[0] * factor, grid[1] * factor)
    x = lr_up01 if tuple(lr_up01.shape[-2:]) == size else F.interpolate(lr_up01, size=size, mode="area")
    return F.pixel_unshuffle(x, factor) if factor > 1 else x


class LRPixelBranch(nn.Module):
    """Per-token SFT parameters from the LR pixels; ``reach + 1`` modulation sites (patch embed, blocks)."""

    def __init__(self, dim: int, factor: int, hidden: int = 64, reach: int = 0) -> None:
        super().__init__()
        self.factor = factor
        self.sites = reach + 1
        in_ch = 3 * factor * factor
        self.body = nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU())
        self.heads = nn.Conv2d(hidden, 2 * dim * self.sites, 1)  # (gamma, beta) per site
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.sites))  # lambda(t) = 1 + this

    def reset_parameters(self) -> None:
        """Zero (gamma, beta) heads and lambda(t) = 1: the branch starts neutral, its gradients flow."""
        for module in (self.heads, self.time[1]):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, lr_up01: torch.Tensor, grid: tuple[int, int],
                c: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """lr_up01 (B, 3, H, W), grid (h, w), c (B, D) -> per site (scale, shift), each (B, h*w, D)."""
        weight = self.heads.weight
        x = lr_to_token_grid(lr_up01.to(device=weight.device, dtype=weight.dtype), grid, self.factor)
        params = self.heads(self.body(x)).flatten(2).transpose(1, 2)  # (B, N, 2 D sites)
        lam = 1 + self.time(c)  # (B, sites)
        out = []
        for i, site in enumerate(params.chunk(self.sites, dim=-1)):
            gamma, beta = site.chunk(2, dim=-1)
            li = lam[:, i, None, None].to(gamma.dtype)
            out.append((li * gamma, li * beta))
        return out


def sft(h: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``h (1 + lambda gamma) + lambda beta`` with the branch's (lambda gamma, lambda beta)."""
    scale, shift = scale_shift
    return torch.addcmul(shift.to(h.dtype), h, 1 + scale.to(h.dtype))


class DegradationEmbed(nn.Module):
    """scores (B, K) in [0, 1] (NaN rows: none) -> (B, D) added to the time conditioning."""

    def __init__(self, num_scores: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_scores, dim), nn.SiLU(), nn.Linear(dim, dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        scores = scores.to(device=weight.device, dtype=weight.dtype)
        valid = torch.isfinite(scores).all(dim=-1, keepdim=True)  # (B, 1)
        emb = self.mlp(torch.where(valid, scores, torch.zeros_like(scores)))
        return emb * valid.to(emb.dtype)


class DegradationHead(nn.Module):
    """Semantic tokens (B, M, Dz) -> estimated degradation scores (B, K) in (0, 1)."""

    def __init__(self, semantic_dim: int, num_scores: int, hidden: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(semantic_dim)
        self.mlp = nn.Sequential(nn.Linear(semantic_dim, hidden), nn.GELU(), nn.Linear(hidden, num_scores))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        pooled = self.norm(z.to(device=weight.device, dtype=weight.dtype)).mean(dim=1)  # (B, Dz)
        return torch.sigmoid(self.mlp(pooled))
