"""The guidance input ``omega`` of VOSRDiT (issue 10): zero-initialised, keyword-only, optional."""
from __future__ import annotations

import pytest
import torch

from vosr.models.dit import DiTConfig, VOSRDiT


def _pair() -> tuple[VOSRDiT, VOSRDiT]:
    torch.manual_seed(0)
    plain = VOSRDiT(DiTConfig(hidden_size=32, depth=1, num_heads=2, input_size=8, semantic_dim=6, with_r=True))
    with torch.no_grad():
        for p in plain.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    omega = VOSRDiT(DiTConfig(hidden_size=32, depth=1, num_heads=2, input_size=8, semantic_dim=6, with_r=True,
                              with_omega=True))
    missing, unexpected = omega.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("omega_embedder.") for k in missing)
    return plain.eval(), omega.eval()


def test_fresh_omega_input_changes_nothing_and_trained_one_does():
    plain, omega = _pair()
    x, t, r, z = torch.randn(2, 8, 8, 8), torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.2]), torch.randn(2, 5, 6)
    with torch.no_grad():
        ref = plain(x, t, z, r)
        assert torch.equal(omega(x, t, z, r), ref)
        assert torch.equal(omega(x, t, z, r, omega=torch.tensor([0.3, -0.5])), ref)  # zero-initialised
        omega.omega_embedder.mlp[2].weight.normal_(0, 0.1)
        a = omega(x, t, z, r, omega=torch.tensor([0.0, 0.0]))
        b = omega(x, t, z, r, omega=torch.tensor([1.0, 1.0]))
    assert (a - b).abs().max() > 1e-4


def test_omega_to_a_model_without_the_input_is_an_error():
    plain, _ = _pair()
    with pytest.raises(ValueError, match="with_omega"):
        plain(torch.randn(1, 8, 8, 8), torch.ones(1), torch.randn(1, 5, 6), torch.zeros(1), omega=torch.ones(1))
