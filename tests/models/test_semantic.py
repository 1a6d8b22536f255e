"""Semantic encoder: token shapes, deterministic random weights, equality with timm, local weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vosr.config import SemanticConfig, load_run_config
from vosr.models.semantic import RANDOM_INIT_SEED, SemanticEncoder, build_semantic_encoder

REPO = Path(__file__).resolve().parents[2]


def _tiny_cfg(**kw: object) -> SemanticConfig:
    return load_run_config(str(REPO / "configs" / "tiny.yaml"), [f"semantic.{k}={v}" for k, v in kw.items()]).semantic


def _images(size: int = 64) -> torch.Tensor:
    from skimage import data  # real photographs

    crops = [np.ascontiguousarray(p[:size, :size, :3]) for p in (data.astronaut(), data.coffee())]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def test_tiny_config_shape() -> None:
    cfg = _tiny_cfg()
    enc = build_semantic_encoder(cfg)
    assert isinstance(enc, SemanticEncoder) and (enc.dim, enc.num_tokens) == (48, 16)
    tokens = enc(_images())
    assert tokens.shape == (2, 16, 48) and torch.isfinite(tokens).all()
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.train().training
    assert build_semantic_encoder(SemanticConfig(kind="none")) is None


def test_random_init_is_deterministic_and_leaves_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_semantic_encoder(_tiny_cfg())
    assert torch.equal(torch.get_rng_state(), state)  # forked RNG: the caller's stream is untouched
    torch.manual_seed(999)
    b = build_semantic_encoder(_tiny_cfg())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("block_index", [0, 1])
def test_matches_timm_intermediates(block_index: int) -> None:
    cfg = _tiny_cfg(block_index=block_index)
    enc = build_semantic_encoder(cfg)
    with torch.random.fork_rng(devices=[]):  # the same random weights, untruncated
        torch.manual_seed(RANDOM_INIT_SEED)
        ref = timm.create_model(cfg.timm_name, pretrained=False, img_size=56, **cfg.timm_kwargs).eval()
    img = _images()
    x = F.interpolate(img, size=(56, 56), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # ImageNet
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        (feat,) = ref.forward_intermediates(x, indices=[block_index], norm=False, intermediates_only=True)
    torch.testing.assert_close(enc(img), feat.flatten(2).transpose(1, 2))  # (B, D, 4, 4) -> (B, 16, D)
    assert len(enc.vit.blocks) == block_index + 1


def test_local_weights_and_errors(tmp_path: Path) -> None:
    cfg = _tiny_cfg()
    with pytest.raises(FileNotFoundError, match="semantic.path"):
        build_semantic_encoder(SemanticConfig(timm_name=cfg.timm_name, path=str(tmp_path / "nope.pth"),
                                              input_size=56, timm_kwargs=cfg.timm_kwargs))
    torch.manual_seed(5)
    # saved at another resolution (as released DINOv2 at 518 px): timm resamples the position table
    src = timm.create_model(cfg.timm_name, pretrained=False, img_size=70, **cfg.timm_kwargs)
    save_file(src.state_dict(), str(tmp_path / "dino.safetensors"))
    enc = build_semantic_encoder(SemanticConfig(timm_name=cfg.timm_name, path=str(tmp_path / "dino.safetensors"),
                                                block_index=1, input_size=56, timm_kwargs=cfg.timm_kwargs))
    torch.testing.assert_close(enc.vit.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    with pytest.raises(ValueError, match="semantic.block_index"):
        build_semantic_encoder(_tiny_cfg(block_index=2))
