"""What a training run is built from: the stage interface (``Objective``), the frozen parts, the
model, the world, the run folder and the generators (shared by ``vosr.train`` and ``vosr.distill``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.data.degrade import RealESRGANDegradation
from vosr.models.autoencoder import Autoencoder, build_autoencoder
from vosr.models.dit import build_dit
from vosr.models.semantic import SemanticEncoder, build_semantic_encoder
from vosr.runtime import distributed
from vosr.runtime.engine import set_backend_flags

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator],
                  tuple[torch.Tensor, dict[str, float]]]
SampleFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass(kw_only=True)
class Objective:
    """What a stage trains: its loss, its validation sampler and its cost in forward passes."""

    name: str
    loss: LossFn
    sample: SampleFn
    flops_per_image: float | None = None
    """Model FLOPs of one training image (all forward and backward passes), for MFU."""
    extra_samplers: dict[str, SampleFn] = field(default_factory=dict)
    """More rows for the validation grid (e.g. the teacher at 25 steps)."""
    guidance_grid: dict[str, SampleFn] = field(default_factory=dict)
    """Samplers drawn into a second validation sheet (``val/guidance_<step>.png``), one labelled column
    each (the teacher's ``flow.val_guidance_grid`` of (s_lr, s_sem) pairs); empty = no sheet."""
    uses_extras: bool = False
    """``loss`` takes ``extras=`` (``vosr.training.conditioning.Extras``: LR pixels, degradation scores)."""


@dataclass(kw_only=True)
class FrozenParts:
    """The frozen encoders and the degradation that turn HQ crops into training inputs."""

    degradation: RealESRGANDegradation
    autoencoder: Autoencoder
    semantic: SemanticEncoder | None
    sample_posterior: bool = True
    """Training encodes with a posterior draw (``autoencoder.sample_posterior``); validation with the mean."""

    @torch.no_grad()
    def encode_pair(self, hr: torch.Tensor, generator: torch.Generator | None, *, train: bool = True,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """hr (B,3,H,W) in [0,1] -> (z_hq, z_lq, sem tokens | None, lr_up (B,3,H,W)).

        The degradation runs in fp32; the frozen encoders under ``autocast`` (bf16 on GPUs). In
        training a stochastic autoencoder draws its posterior with ``generator`` (see
        ``sample_posterior``).
        """
        z_hq, z_lq, sem, lr_up, _ = self.encode_batch(hr, generator, train=train, autocast=autocast)
        return z_hq, z_lq, sem, lr_up

    @torch.no_grad()
    def encode_batch(self, hr: torch.Tensor, generator: torch.Generator | None, *, train: bool = True,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """``encode_pair`` plus the degradation scores (B, K) of each image (``vosr.data.degrade.SCORE_NAMES``)."""
        pair = self.degradation(hr, generator, train=train)
        posterior = generator if train and self.sample_posterior else None
        with autocast():
            z_hq = self.autoencoder.encode(hr, posterior).float()
            z_lq = self.autoencoder.encode(pair.lr_up, posterior).float()
            sem = self.semantic(pair.lr_up).float() if self.semantic is not None else None
        return z_hq, z_lq, sem, pair.lr_up, pair.scores


def latent_grid(cfg: RunConfig, parts: FrozenParts) -> int:
    """Latent side length of one training crop."""
    return cfg.data.crop_size // parts.autoencoder.downsample


def build_model(cfg: RunConfig, parts: FrozenParts, *, with_r: bool) -> nn.Module:
    """The transformer sized for the frozen parts' latent channels and semantic width."""
    from vosr.models.conditioning import lr_unshuffle_factor

    model_cfg = dataclasses.replace(cfg.model, with_r=with_r)
    return build_dit(model_cfg, latent_channels=parts.autoencoder.latent_channels,
                     semantic_dim=parts.semantic.dim if parts.semantic is not None else None,
                     input_size=latent_grid(cfg, parts),
                     lr_unshuffle=lr_unshuffle_factor(parts.autoencoder.downsample * cfg.model.patch_size,
                                                      cfg.data.scale))


def model_flops(model: nn.Module, cfg: RunConfig, parts: FrozenParts, forward_passes: float) -> float:
    """FLOPs of ``forward_passes`` forward-equivalents of ``model`` on one training crop."""
    grid = latent_grid(cfg, parts)
    n_sem = parts.semantic.num_tokens if parts.semantic is not None else 0
    return float(model.flops_per_sample(grid, grid, n_sem)) * forward_passes


def build_frozen_parts(cfg: RunConfig, device: torch.device) -> FrozenParts:
    autoencoder = build_autoencoder(cfg.autoencoder).to(device).eval()
    semantic = build_semantic_encoder(cfg.semantic)
    if semantic is not None:
        semantic = semantic.to(device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    return FrozenParts(degradation=RealESRGANDegradation(cfg.degradation), autoencoder=autoencoder, semantic=semantic,
                       sample_posterior=cfg.autoencoder.sample_posterior)


def setup_world(cfg: RunConfig) -> tuple[distributed.WorldInfo, torch.device]:
    """Process group from torchrun/Slurm env, or a lone process on a private port."""
    info = distributed.world_info_from_env()
    device = distributed.select_device(info)
    distributed.init_distributed(info, cfg.engine.backend)
    set_backend_flags(device, cfg.engine.deterministic)
    return info, device


def resolve_run_dir(cfg: RunConfig, rank: int) -> Path:
    """``cfg.run_dir`` or ``runs/<name>-<timestamp>``, decided on rank 0 and broadcast."""
    run_dir = cfg.run_dir or f"runs/{cfg.name or cfg.stage}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = str(distributed.broadcast_object(run_dir))
    cfg.run_dir = run_dir
    if rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    return Path(run_dir)


def make_generators(cfg: RunConfig, rank: int, device: torch.device) -> dict[str, torch.Generator]:
    """Per-rank generators for the objective's noise (on ``device``) and the degradation draws
    (on the CPU, as ``RealESRGANDegradation`` requires); both are checkpointed."""
    gens = {}
    for offset, key in enumerate(("objective", "degradation")):
        gen = torch.Generator(device=device if key == "objective" else "cpu")
        gen.manual_seed((cfg.seed * 1000003 + rank * 7919 + offset) % 2**63)
        gens[key] = gen
    return gens
