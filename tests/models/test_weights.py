"""load_vosr_weights: released key sets map onto VOSRDiT; files, nesting and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vosr.config import ModelConfig
from vosr.models.dit import build_dit
from vosr.models.weights import load_vosr_weights, read_state_dict


@pytest.mark.parametrize("variant", ["VOSR_0.5B_multistep", "VOSR_0.5B_onestep",
                                     "VOSR_1.4B_multistep", "VOSR_1.4B_onestep"])
def test_released_key_sets_map(golden_dir: Path, variant: str) -> None:
    shapes = json.loads((golden_dir / "vosr_released_state_dict_shapes.json").read_text())[variant]
    cin = shapes["x_embedder.proj.weight"][1] // 2
    zdim = shapes["layer_norm.weight"][0]
    with torch.device("meta"):
        model = build_dit(ModelConfig(preset=variant.split("_")[1], with_r="onestep" in variant),
                          latent_channels=cin, semantic_dim=zdim)
        source = {k: torch.empty(s) for k, s in shapes.items()}  # shapes only, no memory
    model_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert model_shapes == shapes  # every key, RoPE tables at 64x64 latents included
    report = load_vosr_weights(model, source)
    assert report.ok and report.loaded == len(shapes) - 2  # feat_rope.* rebuilt, not loaded
    assert not model.feat_rope.freqs_cos.is_meta  # rebuilt on CPU after a meta-device load


def _tiny(with_r: bool = False) -> torch.nn.Module:
    return build_dit(ModelConfig(preset="tiny", with_r=with_r), latent_channels=4, semantic_dim=32)


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


def test_safetensors_and_nested_pt(tmp_path: Path) -> None:
    src = _randomised(_tiny())
    save_file(src, str(tmp_path / "w.safetensors"))
    torch.save({"ema": src, "step": 3, "optimizer": {"lr": 1.0}}, tmp_path / "ckpt.pt")
    torch.save({"state_dict": src}, tmp_path / "w.pth")
    for name in ("w.safetensors", "ckpt.pt", "w.pth"):
        model = _tiny()
        report = load_vosr_weights(model, tmp_path / name)
        assert report.ok
        for key, value in model.state_dict().items():
            if not key.startswith("feat_rope."):
                torch.testing.assert_close(value, src[key])


def test_rope_tables_from_another_resolution_are_ignored() -> None:
    model = _tiny()
    src = _randomised(model)
    src["feat_rope.freqs_cos"] = torch.zeros(7, 16)
    src["feat_rope.freqs_sin"] = torch.zeros(7, 16)
    cos = model.feat_rope.freqs_cos.clone()
    assert load_vosr_weights(model, src).ok
    torch.testing.assert_close(model.feat_rope.freqs_cos, cos)


def test_mismatches_are_reported() -> None:
    src = _randomised(_tiny())
    src.pop("blocks.0.attn.qkv.bias")
    src["extra.weight"] = torch.zeros(1)
    src["final_layer.linear.bias"] = torch.zeros(3)
    with pytest.raises(KeyError) as err:
        load_vosr_weights(_tiny(), src)
    message = str(err.value)
    assert "blocks.0.attn.qkv.bias" in message and "extra.weight" in message
    assert "final_layer.linear.bias: (3,) vs (16,)" in message and "model.preset" in message
    report = load_vosr_weights(_tiny(), src, strict=False)
    assert report.missing == ["blocks.0.attn.qkv.bias"] and report.unexpected == ["extra.weight"]


def test_student_from_teacher() -> None:
    teacher = _randomised(_tiny())
    student = _tiny(with_r=True)
    with pytest.raises(KeyError, match="r_embedder"):
        load_vosr_weights(student, teacher)
    assert load_vosr_weights(student, teacher, allow_missing=("r_embedder.",)).ok


def test_missing_file_and_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="no tensors"):
        read_state_dict({"step": 3})
