"""Builders shared by the inference/evaluation tests: tiny exported models and real-photo inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.conftest import REPO, real_photos
from vosr.config import RunConfig, load_run_config
from vosr.models.autoencoder import build_autoencoder
from vosr.models.dit import VOSRDiT, build_dit
from vosr.models.semantic import build_semantic_encoder
from vosr.training.export import save_export

TINY = REPO / "configs" / "tiny.yaml"


def tiny_config(*overrides: str) -> RunConfig:
    """configs/tiny.yaml plus dotted overrides."""
    return load_run_config(str(TINY), list(overrides))


def build_model(cfg: RunConfig, seed: int = 0) -> VOSRDiT:
    """The tiny transformer with every zero-initialised tensor randomised, so outputs are non-trivial."""
    autoencoder = build_autoencoder(cfg.autoencoder)
    semantic = build_semantic_encoder(cfg.semantic)
    torch.manual_seed(seed)
    model = build_dit(cfg.model, latent_channels=autoencoder.latent_channels,
                      semantic_dim=None if semantic is None else semantic.dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def make_export(path: Path, *overrides: str, seed: int = 0) -> Path:
    """Write a tiny random-weight export (tiny.yaml + overrides) to ``path``."""
    cfg = tiny_config(*overrides)
    return save_export(path, build_model(cfg, seed).state_dict(), cfg, {"step": "0"})


def make_local_export(path: Path, semantic: bool = False) -> Path:
    """A tiny export whose transformer is a per-token function (self-attention output zeroed).

    Without ``semantic``, tiled and untiled sampling must agree exactly. With it, the queries of
    the cross-attention are constant (zero ``q_linear`` weight), so each tile's semantic tokens add
    one offset to all of its tokens: per-tile context, as in real use, that would show as a step
    at every tile edge if the tiles were not blended.
    """
    cfg = tiny_config() if semantic else tiny_config("semantic.kind=none")
    model = build_model(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            if block.cross_attn is not None:
                block.cross_attn.q_linear.weight.zero_()
    return save_export(path, model.state_dict(), cfg)


def photo(index: int, height: int, width: int, y: int = 0, x: int = 0) -> np.ndarray:
    """An (height, width, 3) uint8 crop of real photo ``index`` starting at (y, x)."""
    img = real_photos()[index]
    return np.ascontiguousarray(img[y:y + height, x:x + width, :3])
