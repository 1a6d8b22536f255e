"""Layers of the VOSR transformer: RMSNorm, 2-D RoPE, attention, SwiGLU and embedders.

Submodule names follow the released checkpoints (``qkv``, ``q_norm``, ``w12``/``w3``,
``q_linear``, ``mlp.0``/``mlp.2``), so their state dicts load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------
# Normalisation and modulation
# ---------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned weight, computed in fp32 (METHOD.md §3)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; shift/scale broadcast over tokens."""
    return torch.addcmul(shift, x, 1 + scale)  # one fused kernel in eager mode


# ---------------------------------------------------------------------------------------
# 2-D rotary position embedding (EVA style)
# ---------------------------------------------------------------------------------------


def rope_positions(n: int, n_train: int, device: torch.device | None = None) -> torch.Tensor:
    """Token positions along one axis: ``0..n-1`` at the training grid, else ``arange(n) / n * n_train``.

    The reference rescales positions to the training extent, so any grid spans the position range
    the model was trained on (a 12-token axis of a model trained at 32 gets positions 0, 2.67, ...).
    Computed in float32 as ``(i / n) * n_train``, like the reference.
    """
    pos = torch.arange(n, dtype=torch.float32, device=device)
    if n != n_train:
        pos = (pos / n) * n_train
    return pos.double()


def rope_2d_tables(head_dim: int, grid_h: int, grid_w: int, theta: float = 10000.0,
                   device: torch.device | None = None,
                   train_grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(grid_h * grid_w, head_dim)`` of the EVA 2-D RoPE, row-major tokens.

    The first half of each head rotates with the row position, the second with the column
    position; within a half, frequency ``1 / theta^(2i/d)`` (d = head_dim / 2) is repeated for
    an interleaved pair. With ``train_grid`` (rows, cols) positions are rescaled to it per axis
    (``rope_positions``); without, they are the integer indices.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}; "
                         "change model.hidden_size or model.num_heads")
    train_h, train_w = train_grid if train_grid is not None else (grid_h, grid_w)
    half = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float64, device=device) / half))
    rows = rope_positions(grid_h, train_h, device)[:, None] * freqs  # (h, half/2)
    cols = rope_positions(grid_w, train_w, device)[:, None] * freqs  # (w, half/2)
    rows = rows.repeat_interleave(2, dim=-1)[:, None, :].expand(grid_h, grid_w, half)
    cols = cols.repeat_interleave(2, dim=-1)[None, :, :].expand(grid_h, grid_w, half)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, head_dim)
    return angles.cos().float(), angles.sin().float()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x0, x1) -> (-x1, x0)`` along the last dim."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``x`` (B, heads, N, head_dim) with tables (N, head_dim)."""
    return x * cos + rotate_pairs(x) * sin


class RoPE2D(nn.Module):
    """Holds the 2-D RoPE tables; ``freqs_cos``/``freqs_sin`` buffers exist for checkpoint keys.

    The buffers are built for the training token grid. ``tables(h, w)`` returns them when the
    grid matches and builds (and caches, non-persistently) tables with positions rescaled to the
    training grid for any other (h, w), as the reference does.
    """

    def __init__(self, head_dim: int, grid_h: int, grid_w: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.grid = (grid_h, grid_w)
        cos, sin = rope_2d_tables(head_dim, grid_h, grid_w)
        self.register_buffer("freqs_cos", cos)  # (grid_h * grid_w, head_dim)
        self.register_buffer("freqs_sin", sin)
        self._cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def reset_buffers(self) -> None:
        """Recompute the registered tables (after loading or meta-device construction)."""
        device = self.freqs_cos.device
        device = torch.device("cpu") if device.type == "meta" else device
        cos, sin = rope_2d_tables(self.head_dim, *self.grid, device=device)
        self.freqs_cos, self.freqs_sin = cos, sin  # re-assigning keeps them registered buffers
        self._cache.clear()

    def tables(self, grid_h: int, grid_w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables (grid_h * grid_w, head_dim) on ``device`` in fp32."""
        if (grid_h, grid_w) == self.grid and self.freqs_cos.device == device:
            return self.freqs_cos, self.freqs_sin
        key = (grid_h, grid_w, str(device))
        if key not in self._cache:
            self._cache[key] = rope_2d_tables(self.head_dim, grid_h, grid_w, device=device, train_grid=self.grid)
        return self._cache[key]


# ---------------------------------------------------------------------------------------
# Attention and feed-forward
# ---------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused qkv (bias), per-head RMSNorm on q/k, 2-D RoPE, SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads; change model.num_heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        cos, sin = rope
        q = apply_rope(self.q_norm(q), cos, sin).to(v.dtype)
        k = apply_rope(self.k_norm(k), cos, sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Cross-attention from image tokens to semantic tokens: q/k/v linears, per-head q/k RMSNorm."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.k_linear = nn.Linear(dim, dim)
        self.v_linear = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        m = s.shape[1]
        q = self.q_norm(self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.k_linear(s).view(b, m, self.num_heads, self.head_dim).transpose(1, 2))
        v = self.v_linear(s).view(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """SwiGLU hidden width int(2/3 * mlp_ratio * dim) (keeps the parameter count of a GELU MLP)."""
    return int(2 / 3 * int(dim * mlp_ratio))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: fused ``w12`` to 2*hidden, ``silu(a) * b``, ``w3`` back; all with bias."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class SemanticMLP(nn.Module):
    """``fc1 -> GELU(tanh) -> fc2`` projecting semantic tokens to the model width."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(z)))


# ---------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch, with bias, then flatten to tokens (row-major)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal ``[cos, sin]`` embedding (256 freqs, max period 10000) -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, freq_dim) fp32 features ``[cos(t f), sin(t f)]``."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32,
                                                                     device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)  # (B, D)
