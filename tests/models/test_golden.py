"""The transformer reproduces the reference implementation's golden tensors (shared/golden)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vosr.models.dit import DiTConfig, VOSRDiT
from vosr.models.weights import load_vosr_weights


def _model_for(golden_dir: Path, name: str) -> tuple[VOSRDiT, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    path = golden_dir / "vosr_reference_tiny.safetensors"
    with safe_open(str(path), "pt") as f:
        ref = json.loads(f.metadata()["configs"])[name]
    tensors = load_file(str(path))
    prefix = f"{name}.weights."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    cfg = DiTConfig(hidden_size=ref["hidden_size"], depth=ref["depth"], num_heads=ref["num_heads"],
                    patch_size=ref["patch_size"], in_channels=ref["in_channels"],
                    out_channels=ref["out_channels"], mlp_ratio=ref["mlp_ratio"], semantic_dim=ref["z_dims"],
                    semantic_mlp_ratio=ref["encdim_ratio"], with_r=ref["auxiliary_time_cond"],
                    input_size=ref["input_size"])
    return VOSRDiT(cfg).eval(), state, tensors


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
