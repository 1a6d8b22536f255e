"""DINOv3 (timm Eva: RoPE inside the blocks, no patch_drop) as the semantic condition, tiny and random."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vosr.config import SemanticConfig, load_run_config
from vosr.models.semantic import RANDOM_INIT_SEED, build_semantic_encoder

REPO = Path(__file__).resolve().parents[2]
KW = {"depth": 3, "embed_dim": 32, "num_heads": 2}


def _cfg(**kw: object) -> SemanticConfig:
    base = dict(timm_name="vit_base_patch16_dinov3", random_init=True, block_index=1, input_size=64, timm_kwargs=KW)
    return SemanticConfig(**{**base, **kw})


def _images() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(2, 3, 48, 48)


@pytest.mark.parametrize("block_index", [0, 2])
def test_dinov3_matches_timm_intermediates(block_index: int) -> None:
    cfg = _cfg(block_index=block_index)
    enc = build_semantic_encoder(cfg)
    assert (enc.dim, enc.num_tokens) == (32, 16)  # patch 16 at 64 px: 4 x 4 tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        ref = timm.create_model(cfg.timm_name, pretrained=False, img_size=64, **KW).eval()
    img = _images()
    x = F.interpolate(img, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        (feat,) = ref.forward_intermediates(x, indices=[block_index], norm=False, intermediates_only=True)
    torch.testing.assert_close(enc(img), feat.flatten(2).transpose(1, 2))
    assert len(enc.vit.blocks) == block_index + 1


def test_dinov3_448_gives_28x28_and_num_tokens_resizes() -> None:
    enc = build_semantic_encoder(_cfg(input_size=448, block_index=0, timm_kwargs={**KW, "depth": 1}))
    assert enc.num_tokens == 28 * 28
    small = build_semantic_encoder(_cfg(num_tokens=4))
    tokens = small(_images())
    assert tokens.shape == (2, 4, 32) and torch.isfinite(tokens).all()
    with pytest.raises(ValueError, match="semantic.num_tokens"):
        _cfg(num_tokens=5)


def test_dinov3_local_weights(tmp_path: Path) -> None:
    torch.manual_seed(5)
    src = timm.create_model("vit_base_patch16_dinov3", pretrained=False, img_size=64, **KW)
    save_file(src.state_dict(), str(tmp_path / "dinov3.safetensors"))
    enc = build_semantic_encoder(_cfg(random_init=False, path=str(tmp_path / "dinov3.safetensors")))
    torch.testing.assert_close(enc.vit.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_teacher_config_loads() -> None:
    cfg = load_run_config(str(REPO / "configs" / "teacher" / "vosr_0.5b_dinov3.yaml"))
    assert cfg.semantic.timm_name == "vit_base_patch16_dinov3" and cfg.semantic.input_size == 448
