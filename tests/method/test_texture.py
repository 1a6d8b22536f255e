"""The Gram-matrix texture loss (issue 10): pure maths and the frozen encoder's block features."""
from __future__ import annotations

import pytest
import torch

from vosr.config import SemanticConfig
from vosr.method.texture import gram_loss, gram_matrix, vit_flops
from vosr.models.semantic import block_features, build_semantic_encoder


def test_gram_matrix_normalisation():
    f = torch.ones(2, 10, 4)
    torch.testing.assert_close(gram_matrix(f), torch.full((2, 4, 4), 10 / 40))
    with pytest.raises(ValueError):
        gram_matrix(torch.ones(10, 4))


def test_gram_loss_zero_identical_permutation_invariant_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 49, 16, generator=g), torch.randn(3, 49, 16, generator=g)]
    assert gram_loss(a, [x.clone() for x in a]) == 0
    perm = torch.randperm(49, generator=g)
    assert gram_loss(a, [x[:, perm] for x in a]).item() == pytest.approx(0.0, abs=1e-12)
    b = [x + 0.3 * torch.randn(x.shape, generator=g) for x in a]
    assert gram_loss(a, b) > 0
    # Changing the texture statistics (channel scales) is seen, a mere re-arrangement is not.
    assert gram_loss(a, [x * torch.linspace(0.5, 1.5, 16) for x in a]) > 1e-5


def test_gram_loss_gradient_and_encoder_features():
    enc = build_semantic_encoder(SemanticConfig(random_init=True, timm_name="vit_small_patch14_dinov2",
                                                block_index=2, input_size=56,
                                                timm_kwargs={"depth": 3, "embed_dim": 48, "num_heads": 2}))
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 64, 64, generator=g)
    img = ref.clone().requires_grad_(True)
    feats = block_features(enc, img, [0, 2])
    assert [tuple(f.shape) for f in feats] == [(2, 16, 48), (2, 16, 48)]
    torch.testing.assert_close(feats[1], enc(ref))  # the last block is the semantic tokens themselves
    with torch.no_grad():
        ref_feats = block_features(enc, ref, [0, 2])
    assert gram_loss(feats, ref_feats) == 0
    noisy = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    loss = gram_loss(block_features(enc, noisy, [0, 2]), ref_feats)
    assert loss > 0
    loss.backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="semantic.block_index"):
        block_features(enc, ref, [3])


def test_vit_flops_counts_blocks():
    assert vit_flops(16, 48, 2) == pytest.approx(2 * vit_flops(16, 48, 1))
    assert vit_flops(16, 48, 1) == 2 * (16 * (4 + 8) * 48 * 48 + 2 * 16 * 16 * 48)
