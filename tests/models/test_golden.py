"""The transformer reproduces the reference implementation's golden tensors (tests/golden)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.golden_models import golden_config, golden_model, golden_state
from vosr.models.dit import VOSRDiT
from vosr.models.weights import load_vosr_weights


def _model_for(golden_dir: Path, name: str) -> tuple[VOSRDiT, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    tensors = load_file(str(golden_dir / "vosr_reference_tiny.safetensors"))
    return VOSRDiT(golden_config(golden_dir, name)).eval(), golden_state(golden_dir, name), tensors


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_golden_forward(golden_dir: Path, name: str) -> None:
    model, state, tensors = _model_for(golden_dir, name)
    model.load_state_dict(state, strict=True)  # exactly the released key set, RoPE tables included
    with torch.no_grad():
        out = model(tensors[f"{name}.in.x"], tensors[f"{name}.in.t"], tensors[f"{name}.in.z"],
                    tensors.get(f"{name}.in.r"))
    torch.testing.assert_close(out, tensors[f"{name}.out"], atol=1e-5, rtol=1e-5)


def test_golden_rope_tables_rebuilt(golden_dir: Path) -> None:
    model, state, _ = _model_for(golden_dir, "teacher")
    torch.testing.assert_close(model.feat_rope.freqs_cos, state["feat_rope.freqs_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.feat_rope.freqs_sin, state["feat_rope.freqs_sin"], atol=1e-6, rtol=0)


def test_golden_through_importer(golden_dir: Path) -> None:
    """load_vosr_weights (which drops and rebuilds feat_rope) gives the same output."""
    model, state, tensors = _model_for(golden_dir, "student")
    report = load_vosr_weights(model, state)
    assert report.ok and report.loaded == len(state) - 2
    with torch.no_grad():
        out = model(tensors["student.in.x"], tensors["student.in.t"], tensors["student.in.z"],
                    tensors["student.in.r"])
    torch.testing.assert_close(out, tensors["student.out"], atol=1e-5, rtol=1e-5)


def test_student_with_r_equal_t_is_teacher_function(golden_dir: Path) -> None:
    """With r = t (or r omitted) the r branch contributes nothing (METHOD.md §3)."""
    model, state, tensors = _model_for(golden_dir, "student")
    model.load_state_dict(state)
    x, t, z = tensors["student.in.x"], tensors["student.in.t"], tensors["student.in.z"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, z, t.clone()), model(x, t, z, None))


OTHER_GRIDS = ("12x12", "20x20", "20x12")  # latent H x W; the training grid is 16x16 (8x8 tokens)


@pytest.mark.parametrize("size", OTHER_GRIDS)
def test_golden_rope_tables_at_other_grids(golden_dir: Path, size: str) -> None:
    """Positions rescaled to the 8x8 training grid, per axis, and the tables built from them."""
    g = load_file(str(golden_dir / "vosr_reference_sampling.safetensors"))
    model = golden_model(golden_dir, "teacher")
    h, w = (int(v) // 2 for v in size.split("x"))
    cos, sin = model.feat_rope.tables(h, w, torch.device("cpu"))
    torch.testing.assert_close(cos, g[f"rope.{size}.freqs_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, g[f"rope.{size}.freqs_sin"], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("weights", "size"), [*(("teacher", s) for s in OTHER_GRIDS),
                                               *(("teacher_attn", s) for s in (*OTHER_GRIDS, "16x16"))])
def test_golden_forward_at_other_grids(golden_dir: Path, weights: str, size: str) -> None:
    """The teacher at latent grids other than its training one; ``teacher_attn`` weights make attention
    depend on position, so integer instead of rescaled positions would move the output by ~0.1."""
    g = load_file(str(golden_dir / "vosr_reference_sampling.safetensors"))
    swapped = {k[len("teacher_attn.weights."):]: v for k, v in g.items() if k.startswith("teacher_attn.weights.")}
    model = golden_model(golden_dir, "teacher", **(swapped if weights == "teacher_attn" else {}))
    with torch.no_grad():
        out = model(g[f"sizes.in.x_{size}"], g["sizes.in.t"], g["sizes.in.z"])
    torch.testing.assert_close(out, g[f"sizes.{weights}.out_{size}"], atol=1e-5, rtol=1e-5)
