"""VOSRDiT: shapes on any grid, initialisation, checkpointing, presets, FLOPs."""
from __future__ import annotations

import pytest
import torch

from vosr.config import ModelConfig
from vosr.models.dit import PRESETS, DiTConfig, VOSRDiT, build_dit
from vosr.models.layers import rope_2d_tables


def _tiny(with_r: bool = False, semantic_dim: int | None = 32, **kw: object) -> VOSRDiT:
    torch.manual_seed(0)
    model = build_dit(ModelConfig(preset="tiny", with_r=with_r, **kw), latent_channels=4,
                      semantic_dim=semantic_dim, input_size=16)
    for p in model.parameters():  # leave the zero init so outputs depend on every path
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("hw", [(16, 16), (8, 24), (6, 10), (32, 12)])
def test_forward_any_grid(hw: tuple[int, int]) -> None:
    model = _tiny(with_r=True)
    x, z = torch.randn(2, 8, *hw), torch.randn(2, 5, 32)
    out = model(x, torch.rand(2), z, torch.rand(2))
    assert out.shape == (2, 4, *hw) and torch.isfinite(out).all()


def test_non_square_grid_is_consistent_with_tables() -> None:
    """A rectangular grid uses tables whose row/column halves follow the token's (row, col)."""
    cos, sin = rope_2d_tables(16, 3, 5)
    cos, sin = cos.view(3, 5, 16), sin.view(3, 5, 16)
    rows, cols = torch.arange(3.0)[:, None].expand(3, 5), torch.arange(5.0)[None].expand(3, 5)
    for i, freq in enumerate([1.0, 0.1, 0.01, 0.001]):  # 1 / 10000^(2i/8), each for a pair
        for j in (2 * i, 2 * i + 1):
            torch.testing.assert_close(cos[..., j], torch.cos(rows * freq))  # first half: row index
            torch.testing.assert_close(sin[..., 8 + j], torch.sin(cols * freq))  # second half: column


def test_no_semantic_model() -> None:
    model = _tiny(semantic_dim=None)
    assert not any("cross_attn" in k or "mlp_ca" in k for k in model.state_dict())
    assert model(torch.randn(1, 8, 8, 8), torch.rand(1), None).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="semantic"):
        model(torch.randn(1, 8, 8, 8), torch.rand(1), torch.randn(1, 4, 32))


def test_bad_inputs_raise() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="patch_size"):
        model(torch.randn(1, 8, 9, 8), torch.rand(1), torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match="semantic"):
        model(torch.randn(1, 8, 8, 8), torch.rand(1), torch.randn(1, 4, 31))
    with pytest.raises(ValueError, match="model.preset"):
        build_dit(ModelConfig(preset="huge"), latent_channels=4, semantic_dim=None)


def test_initialize_weights_zero_output() -> None:
    model = build_dit(ModelConfig(preset="tiny", with_r=True), latent_channels=4, semantic_dim=32)
    out = model(torch.randn(2, 8, 8, 8), torch.rand(2), torch.randn(2, 3, 32), torch.rand(2))
    assert torch.count_nonzero(out) == 0
    # adaLN-single as in the reference: N(0, 0.02) weights, zero bias (not adaLN-zero)
    assert model.t_block[1].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.t_block[1].bias) == 0
    assert torch.count_nonzero(model.final_layer.adaLN_modulation[1].weight) == 0


def test_grad_checkpointing_matches() -> None:
    x, t, z = torch.randn(2, 8, 8, 12), torch.rand(2), torch.randn(2, 5, 32)
    grads = []
    for ckpt in (False, True):
        model = _tiny(grad_checkpointing=ckpt).train()
        model(x, t, z).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_compile_blocks_keeps_keys_and_function() -> None:
    model = _tiny()
    x, t, z = torch.randn(1, 8, 8, 8), torch.rand(1), torch.randn(1, 4, 32)
    ref = model(x, t, z)
    keys = list(model.state_dict())
    model.compile_blocks(backend="eager")
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x, t, z), ref)


@pytest.mark.parametrize(("preset", "cin", "zdim", "params"), [
    ("0.5B", 4, 768, 485_623_616), ("1.4B", 16, 1024, 1_393_943_616)])
def test_preset_param_counts(preset: str, cin: int, zdim: int, params: int) -> None:
    with torch.device("meta"):
        model = build_dit(ModelConfig(preset=preset), latent_channels=cin, semantic_dim=zdim)
    assert model.num_params() == params  # = the released shapes (see test_weights)
    assert abs(model.num_params() / 1e9 - float(preset[:-1])) < 0.02
    flops = model.flops_per_sample(64, 64, 1024)
    # ~2 FLOPs/param/token for the blocks plus attention: a sanity band, not an exact figure
    assert 2 * model.num_params() * 1024 < flops < 4 * model.num_params() * 1024


def test_flops_counts_matmuls_exactly_for_tiny() -> None:
    """Compare flops_per_sample with torch's FLOP counter (linears and convs).

    The counter does not see the CPU SDPA kernel, so the attention products
    (2 * N * N * D self, 2 * N * M * D cross, per block, x2 FLOPs per MAC) are added here.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny(with_r=True)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 8, 12, 16), torch.rand(1), torch.randn(1, 5, 32), torch.rand(1))
    n, m, d, depth = 6 * 8, 5, 64, 2
    attention = 2 * depth * (2 * n * n * d + 2 * n * m * d)
    assert model.flops_per_sample(12, 16, 5) == counter.get_total_flops() + attention


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(hidden_size=64, depth=1, num_heads=3)
    assert set(PRESETS) == {"tiny", "0.5B", "1.4B"}
