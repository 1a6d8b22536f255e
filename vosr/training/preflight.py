"""The one validation pass every training entry runs before any heavy work.

``vosr.train``, ``vosr.distill`` (through ``vosr.training.cli.load_cli_config``) and
``vosr.launch --dry-run`` / submission all call :func:`preflight`: the world size (from the
launcher's environment, or the submission's geometry), every path, every positive integer, the
model preset and timm name, crop vs patch and scale, and the global batch. Errors are
``ConfigError("KEY: what is wrong; how to fix")``; the CLIs print them as one line and exit 2.

The global batch: ``engine.global_batch_size`` is the fixed quantity. When it is set and
``data.batch_size x optim.grad_accum x world`` differs, the gradient accumulation is derived as
``global / (batch_size x world)`` when that divides; when ``batch_size x world`` already exceeds the
global batch, the micro-batch becomes ``global / world`` (accumulation 1). So one config runs
unchanged on 1, 2, 4 or 8 nodes; the returned note says what was derived. Anything else is an error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vosr.config import ConfigError, RunConfig

POSITIVE = ("log.every_steps", "checkpoint.every_steps", "checkpoint.keep_latest", "optim.max_steps",
            "optim.grad_accum", "data.batch_size", "data.crop_size", "data.scale", "data.val_size",
            "data.crops_per_image", "model.patch_size", "flow.sample_steps", "distill.num_substeps",
            "autoencoder.tile_size", "semantic.input_size", "model.hidden_size", "model.depth", "model.num_heads",
            "engine.global_batch_size")
"""Integer keys that must be >= 1 (when set)."""
NON_NEGATIVE = ("log.val_every", "optim.warmup_steps", "optim.max_nonfinite", "data.num_workers",
                "semantic.block_index", "autoencoder.tile_overlap", "seed")
MARKER = "complete.json"
"""What marks a complete checkpoint folder (``vosr.runtime.checkpoint.MARKER``, not imported: it needs torch)."""
VAE_DOWNSAMPLE = {"sd_vae": 8, "qwen_image": 8}
"""Pixels per latent pixel of the VAEs (the pixel space uses ``autoencoder.pixel_unshuffle``)."""


def world_size_from_env(env: Mapping[str, str] | None = None) -> int:
    """The world size the run will see: torchrun's ``WORLD_SIZE``, else Slurm's ``SLURM_NTASKS`` (inside a
    job step), else 1 (the same rule as ``vosr.runtime.distributed.world_info_from_env``)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_NTASKS"])
    return 1


def _get(cfg: RunConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def preflight(cfg: RunConfig, world_size: int, *, check_files: bool = True) -> list[str]:
    """Check ``cfg`` for a run on ``world_size`` ranks; fills in the derived ``optim.grad_accum``.

    Returns notes for the start-up log; raises ``ConfigError`` naming the key, what is wrong and the fix.
    """
    for key in POSITIVE:
        value = _get(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}; set {key} to a positive integer")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}; set {key}=0 or more")
    if world_size < 1:
        raise ConfigError(f"world size: {world_size} ranks; launch at least one process")
    if check_files:  # first: the common mistake, and no torch import needed to find it
        _check_files(cfg)
    notes = [derive_grad_accum(cfg, world_size)]
    _check_model(cfg)  # imports torch and timm for the preset table and timm's model names
    return [n for n in notes if n]


def _check_model(cfg: RunConfig) -> None:
    from vosr.models.dit import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset: {cfg.model.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    heads = cfg.model.num_heads or PRESETS[cfg.model.preset]["num_heads"]
    width = cfg.model.hidden_size or PRESETS[cfg.model.preset]["hidden_size"]
    if width % heads:
        raise ConfigError(f"model.hidden_size: {width} is not a multiple of model.num_heads={heads}; "
                          "change one of them")
    down = VAE_DOWNSAMPLE.get(cfg.autoencoder.kind, cfg.autoencoder.pixel_unshuffle)
    unit = down * cfg.model.patch_size
    if cfg.data.crop_size % unit:
        raise ConfigError(f"data.crop_size: {cfg.data.crop_size} px is not a multiple of the autoencoder's "
                          f"{down} px per latent x model.patch_size={cfg.model.patch_size} = {unit} px; "
                          f"set data.crop_size to a multiple of {unit}")
    if cfg.data.crop_size % cfg.data.scale:
        raise ConfigError(f"data.crop_size: {cfg.data.crop_size} is not a multiple of data.scale={cfg.data.scale}; "
                          f"set data.crop_size to a multiple of {cfg.data.scale}")
    if cfg.semantic.kind == "timm":
        import timm

        if not timm.is_model(cfg.semantic.timm_name):
            close = timm.list_models(f"{cfg.semantic.timm_name.split('_')[0]}_*dinov2*")[:4]
            similar = f" (similar: {', '.join(close)})" if close else ""
            raise ConfigError(f"semantic.timm_name: {cfg.semantic.timm_name!r} is not a timm architecture; "
                              f"use e.g. vit_base_patch14_dinov2{similar}")


def derive_grad_accum(cfg: RunConfig, world_size: int) -> str | None:
    """Set ``optim.grad_accum`` so that ``engine.global_batch_size`` holds on ``world_size`` ranks; returns a
    note when it changed (None when nothing was to derive); raises when no accumulation reaches it."""
    wanted = cfg.engine.global_batch_size
    micro = cfg.data.batch_size
    if wanted is None or micro * cfg.optim.grad_accum * world_size == wanted:
        return None
    per_step = micro * world_size
    if per_step > wanted and wanted % world_size == 0:  # more ranks than the micro-batch needs: smaller micro-batch
        note = (f"data.batch_size {wanted // world_size} (not {micro}) and gradient accumulation 1 derived from "
                f"engine.global_batch_size={wanted} / world size {world_size}")
        cfg.data.batch_size, cfg.optim.grad_accum = wanted // world_size, 1
        return note
    if wanted % per_step:
        raise ConfigError(
            f"engine.global_batch_size: {wanted} is not a multiple of data.batch_size={micro} x world size "
            f"{world_size} = {per_step}, so no gradient accumulation reaches it; change data.batch_size, the "
            "number of ranks, or engine.global_batch_size")
    accum = wanted // per_step
    note = (f"gradient accumulation {accum} derived from engine.global_batch_size={wanted} / (data.batch_size="
            f"{micro} x world size {world_size}) (the config said optim.grad_accum={cfg.optim.grad_accum})")
    cfg.optim.grad_accum = accum
    return note


def _check_files(cfg: RunConfig) -> None:
    from vosr.data.mix import expand_shards
    from vosr.training.cli import check_paths

    check_paths(cfg)
    if cfg.data.val is not None:
        try:
            expand_shards(cfg.data.val, "data.val")
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{err}, or data.val=null for no validation") from None
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none"):
        if not (Path(resume).expanduser() / MARKER).is_file():
            raise ConfigError(f"checkpoint.resume: {resume} is not a complete checkpoint folder (no {MARKER}); "
                              "set it to a checkpoints/step_* folder, auto or none")
