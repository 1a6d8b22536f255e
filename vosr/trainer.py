"""The training loop shared by the teacher (``vosr.train``) and the one-step student (``vosr.distill``).

One step: HQ crops stream in, are degraded on the accelerator, encoded by the frozen
autoencoder and semantic encoder, and the stage's objective gives a loss that the DeepSpeed
engine steps on. Checkpoints, EMA export, validation, preemption and logging hang off it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from vosr.config import RunConfig, load_run_config
from vosr.data.degrade import RealESRGANDegradation
from vosr.data.mix import resolve_sources
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


@dataclass(kw_only=True)
class FrozenParts:
    """The frozen encoders and the degradation that turn HQ crops into training inputs."""

    degradation: RealESRGANDegradation
    autoencoder: Autoencoder
    semantic: SemanticEncoder | None

    @torch.no_grad()
    def encode_pair(self, hr: torch.Tensor, generator: torch.Generator | None, *, train: bool = True,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """hr (B,3,H,W) in [0,1] -> (z_hq, z_lq, sem tokens | None, lr_up (B,3,H,W)).

        The degradation runs in fp32; the frozen encoders under ``autocast`` (bf16 on GPUs).
        """
        pair = self.degradation(hr, generator, train=train)
        with autocast():
            z_hq = self.autoencoder.encode(hr).float()
            z_lq = self.autoencoder.encode(pair.lr_up).float()
            sem = self.semantic(pair.lr_up).float() if self.semantic is not None else None
        return z_hq, z_lq, sem, pair.lr_up


def parse_cli(argv: list[str] | None, description: str) -> tuple[str, list[str]]:
    """``--config PATH [key=value ...]``."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="Overrides are dotted keys, e.g. optim.lr=2e-4 data.batch_size=8")
    parser.add_argument("--config", "-c", required=True, help="run config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def load_cli_config(argv: list[str] | None, description: str) -> RunConfig:
    """Parse the CLI and load a validated ``RunConfig`` (fails before any heavy work)."""
    path, overrides = parse_cli(argv, description)
    cfg = load_run_config(path, overrides)
    if cfg.name is None:
        cfg.name = Path(path).stem
    check_paths(cfg)
    return cfg


def check_paths(cfg: RunConfig) -> None:
    """Every file the run will read exists; raises naming the config key (before any GPU work)."""
    wanted = [("autoencoder.path", cfg.autoencoder.path), ("autoencoder.decoder_path", cfg.autoencoder.decoder_path),
              ("model.init_from", cfg.model.init_from)]
    if cfg.semantic.kind != "none" and not cfg.semantic.random_init:
        wanted.append(("semantic.path", cfg.semantic.path))
    if cfg.stage == "distill":
        wanted.append(("distill.teacher", cfg.distill.teacher))
    for key, value in wanted:
        if value is not None and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key}={value} does not exist; set {key} to a local file")
    if cfg.stage == "distill" and cfg.distill.lpips_weight > 0:
        from vosr.metrics import lpips_unavailable_reason

        if (reason := lpips_unavailable_reason()) is not None:
            raise FileNotFoundError(f"distill.lpips_weight={cfg.distill.lpips_weight} needs LPIPS: {reason}; "
                                    "or set distill.lpips_weight=0")
    resolve_sources(cfg.data)  # raises FileNotFoundError naming data.train / data.mix_file


def latent_grid(cfg: RunConfig, parts: FrozenParts) -> int:
    """Latent side length of one training crop."""
    return cfg.data.crop_size // parts.autoencoder.downsample


def build_model(cfg: RunConfig, parts: FrozenParts, *, with_r: bool) -> nn.Module:
    """The transformer sized for the frozen parts' latent channels and semantic width."""
    model_cfg = dataclasses.replace(cfg.model, with_r=with_r)
    return build_dit(model_cfg, latent_channels=parts.autoencoder.latent_channels,
                     semantic_dim=parts.semantic.dim if parts.semantic is not None else None,
                     input_size=latent_grid(cfg, parts))


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
    return FrozenParts(degradation=RealESRGANDegradation(cfg.degradation), autoencoder=autoencoder, semantic=semantic)


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


def batches(stream, skip: int) -> Iterator[dict]:
    """The stream's batches, after skipping ``skip`` already-used ones (bit-exact replay)."""
    it = iter(stream)
    for _ in range(skip):
        next(it)
    yield from it
