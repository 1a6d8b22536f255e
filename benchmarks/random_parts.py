"""Frozen parts with random weights for timing benchmarks (never for training or quality)."""
from __future__ import annotations

import torch

from vosr.config import RunConfig
from vosr.data.degrade import RealESRGANDegradation
from vosr.models.autoencoder import DiffusersVAE, build_autoencoder, sd21_vae_config
from vosr.models.semantic import build_semantic_encoder
from vosr.training.setup import FrozenParts

# Satisfies autoencoder.path validation for kind=sd_vae; never opened (random weights instead).
UNUSED_VAE_PATH = "autoencoder.path=/nonexistent-random-weights"


def random_frozen_parts(cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> FrozenParts:
    """``cfg``'s degradation, autoencoder and semantic encoder; the SD-2.1 VAE and DINOv2 with random
    weights (same architecture, so the same cost as the real ones); pixel space as configured."""
    if cfg.autoencoder.kind == "pixel":
        autoencoder = build_autoencoder(cfg.autoencoder)
    elif cfg.autoencoder.kind == "sd_vae":
        import diffusers

        autoencoder = DiffusersVAE(diffusers.AutoencoderKL(**sd21_vae_config()), video=False, scaling_factor=None)
    else:
        raise ValueError(f"no random stand-in for autoencoder.kind={cfg.autoencoder.kind} (use pixel or sd_vae)")
    semantic = build_semantic_encoder(cfg.semantic)
    return FrozenParts(degradation=RealESRGANDegradation(cfg.degradation),
                       autoencoder=autoencoder.to(device, dtype=dtype).eval(),
                       semantic=None if semantic is None else semantic.to(device, dtype=dtype).eval())
