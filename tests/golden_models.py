"""The reference implementation's tiny teacher and student (tests/golden), built through vosr."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vosr.models.dit import DiTConfig, VOSRDiT


def golden_config(golden_dir: Path, name: str) -> DiTConfig:
    """``DiTConfig`` of the reference's tiny ``name`` (teacher | student) from its recorded hyper-parameters."""
    with safe_open(str(golden_dir / "vosr_reference_tiny.safetensors"), "pt") as f:
        ref = json.loads(f.metadata()["configs"])[name]
    return DiTConfig(hidden_size=ref["hidden_size"], depth=ref["depth"], num_heads=ref["num_heads"],
                     patch_size=ref["patch_size"], in_channels=ref["in_channels"], out_channels=ref["out_channels"],
                     mlp_ratio=ref["mlp_ratio"], semantic_dim=ref["z_dims"], semantic_mlp_ratio=ref["encdim_ratio"],
                     with_r=ref["auxiliary_time_cond"], input_size=ref["input_size"])


def golden_state(golden_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The recorded weights of ``name`` with the released key names."""
    prefix = f"{name}.weights."
    return {k[len(prefix):]: v for k, v in load_file(str(golden_dir / "vosr_reference_tiny.safetensors")).items()
            if k.startswith(prefix)}


def golden_model(golden_dir: Path, name: str, **swapped: torch.Tensor) -> VOSRDiT:
    """The reference's tiny ``name`` with its recorded weights (``swapped`` tensors replace some), in eval mode."""
    model = VOSRDiT(golden_config(golden_dir, name)).eval()
    model.load_state_dict({**golden_state(golden_dir, name), **swapped}, strict=True)
    return model
