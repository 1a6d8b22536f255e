"""Gram-matrix texture loss (GramSR-style) on token features of a frozen encoder (issue 10).

Pure functions of tensors: ``gram_matrix`` of (B, N, C) token features, normalised by the token
count and the channels, and ``gram_loss``, the mean squared distance of two images' Gram matrices
averaged over the encoder blocks given. A Gram matrix sums over tokens, so the loss ignores where
a texture sits (it is invariant to any permutation of the tokens) and compares only which feature
channels fire together: texture statistics, not layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def gram_matrix(tokens: Tensor) -> Tensor:
    """(B, N, C) token features -> (B, C, C) ``F^T F / (N C)`` in float32."""
    if tokens.dim() != 3:
        raise ValueError(f"gram_matrix expects (B, N, C) token features, got {tuple(tokens.shape)}")
    f = tokens.float()
    n, c = f.shape[1], f.shape[2]
    return torch.bmm(f.transpose(1, 2), f) / (n * c)


def gram_loss(features: Sequence[Tensor], reference: Sequence[Tensor]) -> Tensor:
    """Mean over blocks of ``mean((G(f) - G(g))^2)``; features, reference: per block (B, N, C). Scalar fp32.

    Gradients flow into ``features``; ``reference`` is treated as given (pass it detached).
    """
    if len(features) != len(reference) or not features:
        raise ValueError(f"gram_loss needs the same non-zero number of blocks, got {len(features)} and "
                         f"{len(reference)}")
    terms = [(gram_matrix(f) - gram_matrix(g)).pow(2).mean() for f, g in zip(features, reference)]
    return torch.stack(terms).mean()


def vit_flops(num_tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0, patch_pixels: int = 0) -> float:
    """Forward matmul FLOPs (2 per multiply-add) of ``depth`` ViT blocks over ``num_tokens`` tokens of width
    ``dim`` (qkv, projection, MLP, scores and values), plus the patch embedding of ``patch_pixels`` inputs."""
    macs = depth * (num_tokens * (4 * dim * dim + 2 * mlp_ratio * dim * dim) + 2 * num_tokens * num_tokens * dim)
    macs += num_tokens * 3 * patch_pixels * dim
    return 2.0 * macs
