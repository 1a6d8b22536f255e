"""The student stage: RCGM / shortcut distillation of a frozen teacher into a one-step student.

The student is the teacher's architecture plus the ``r`` time input, initialised from the
teacher's EMA export (the new ``r_embedder`` keeps its own initialisation); the teacher is
frozen, in ``eval()``, outside the optimizer and ZeRO partitioning, in bf16 on GPUs. The
objective's maths (METHOD.md §5) lives in ``vosr.method.distill``; ``build_distill`` is what
``vosr.distill`` hands to the training loop.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.evaluation.metrics import load_lpips
from vosr.method.distill import default_omega, distill_loss, draw_omega
from vosr.method.flow import one_step, randn, sample_euler, sample_one_step
from vosr.method.texture import gram_loss, vit_flops
from vosr.models.semantic import block_features
from vosr.models.weights import load_vosr_weights
from vosr.training import conditioning
from vosr.training.export import OMEGA_EMBEDDER_PREFIX, R_EMBEDDER_PREFIX, export_file, load_export
from vosr.training.setup import FrozenParts, Objective, build_model, model_flops

logger = logging.getLogger(__name__)

STUDENT_ONLY_KEYS = (R_EMBEDDER_PREFIX, OMEGA_EMBEDDER_PREFIX)


def teacher_weights_path(source: str) -> Path:
    """``distill.teacher`` may name the export itself or the teacher's run folder."""
    return export_file(source, "distill.teacher")


def student_config(cfg: RunConfig) -> RunConfig:
    """The run config with ``model.with_omega`` set exactly when ``distill.guidance_range`` is."""
    with_omega = cfg.distill.guidance_range is not None
    if cfg.model.with_omega == with_omega:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, with_omega=with_omega))


def build_teacher_and_student(cfg: RunConfig, parts: FrozenParts,
                              device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Frozen teacher and a student that starts from the teacher's EMA weights (plus a zero-initialised
    omega input when ``distill.guidance_range`` is set)."""
    weights, teacher_cfg = load_export(teacher_weights_path(cfg.distill.teacher))
    if teacher_cfg is not None and teacher_cfg.model.preset != cfg.model.preset:
        logger.warning("teacher preset %s differs from model.preset=%s; shapes decide",
                       teacher_cfg.model.preset, cfg.model.preset)
    teacher_cfg_run = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, with_omega=False))
    teacher = build_model(teacher_cfg_run, parts, with_r=False)
    # A teacher trained without a conditioning module gets it neutral (zero-initialised), as the student does.
    load_vosr_weights(teacher, weights, allow_missing=conditioning.MODULE_PREFIXES)
    teacher.requires_grad_(False).eval()
    bf16 = device.type == "cuda" and cfg.engine.precision in ("bf16", "bf16_autocast")
    teacher.to(device, dtype=torch.bfloat16 if bf16 else None)
    student = build_model(student_config(cfg), parts, with_r=True)
    load_vosr_weights(student, weights, allow_missing=STUDENT_ONLY_KEYS + conditioning.MODULE_PREFIXES)
    return teacher, student


def sample_omega(cfg: RunConfig) -> float | None:
    """The omega a guidance-conditioned student is validated at (None for a plain student)."""
    bounds = cfg.distill.guidance_range
    return None if bounds is None else default_omega(cfg.distill.guidance, bounds)


DecodedTerms = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator],
                        dict[str, torch.Tensor]]
"""``(student, z_hq, z_lq, sem, generator) -> {"lpips": ..., "gram": ...}`` on the decoded one-step sample."""


def gram_blocks(cfg: RunConfig) -> list[int]:
    """Encoder blocks of the Gram loss: ``distill.gram_blocks``, or the token block ``semantic.block_index``."""
    return list(cfg.distill.gram_blocks) or [cfg.semantic.block_index]


def decoded_terms(cfg: RunConfig, parts: FrozenParts, device: torch.device) -> DecodedTerms | None:
    """LPIPS (AlexNet, ``distill.lpips_weight``) and the Gram texture loss (``distill.gram_weight``) between
    the decoded one-step sample and the decoded HQ latent; None when both are off.

    The one-step sample is taken as at inference (``t = 1, r = 0``, clean ``lq`` and tokens; a
    guidance-conditioned student at an omega drawn from its range) and decoded once with gradients
    through the frozen decoder; the Gram loss compares token features of the frozen semantic encoder at
    ``gram_blocks`` (gradients through it into the image). ``check_paths`` has made sure the LPIPS weights
    are on disk (never random or downloaded weights).
    """
    dist = cfg.distill
    if dist.lpips_weight <= 0 and dist.gram_weight <= 0:
        return None
    net = load_lpips(device) if dist.lpips_weight > 0 else None
    blocks = gram_blocks(cfg)
    if dist.gram_weight > 0 and parts.semantic is None:
        raise ValueError("distill.gram_weight > 0 needs the semantic encoder (semantic.kind is none)")

    def terms(student: nn.Module, z_hq: torch.Tensor, z_lq: torch.Tensor, sem: torch.Tensor | None,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
        noise = randn(tuple(z_hq.shape), generator, z_hq.device).to(z_hq.dtype)
        omega = None if dist.guidance_range is None else draw_omega(z_hq.shape[0], dist.guidance_range, generator,
                                                                    z_hq.device)
        z0 = one_step(student, z_lq, sem, noise, omega)
        image = parts.autoencoder.decode(z0).float()
        with torch.no_grad():
            reference = parts.autoencoder.decode(z_hq).float().clamp(0, 1)
        out = {}
        if net is not None:
            out["lpips"] = net(image * 2 - 1, reference * 2 - 1).mean()
        if dist.gram_weight > 0:
            with torch.no_grad():
                ref_feats = block_features(parts.semantic, reference, blocks)
            out["gram"] = gram_loss(block_features(parts.semantic, image.clamp(0, 1), blocks), ref_feats)
        return out

    return terms


def gram_flops(cfg: RunConfig, parts: FrozenParts) -> float:
    """FLOPs per image of the Gram term: the encoder up to its last Gram block on the HQ image (no grad) and on
    the sample, with a backward into the sample (about one more forward: weights are frozen)."""
    if cfg.distill.gram_weight <= 0 or parts.semantic is None:
        return 0.0
    vit = parts.semantic.vit
    patch = vit.patch_embed.patch_size[0]
    tokens = parts.semantic.num_tokens + vit.num_prefix_tokens
    mlp_ratio = vit.blocks[0].mlp.fc1.out_features / parts.semantic.dim if hasattr(vit.blocks[0].mlp, "fc1") else 4.0
    forward = vit_flops(tokens, parts.semantic.dim, max(gram_blocks(cfg)) + 1, mlp_ratio, patch * patch)
    return 3.0 * forward


def student_objective(cfg: RunConfig, teacher: nn.Module, student: nn.Module, parts: FrozenParts,
                      decoded: DecodedTerms | None = None) -> Objective:
    """RCGM/shortcut distillation, plus ``distill.lpips_weight`` x LPIPS and ``distill.gram_weight`` x Gram
    of ``decoded`` when given (each logged as its own ``loss/`` term)."""
    flow, dist = cfg.flow, cfg.distill
    weights = {"lpips": dist.lpips_weight, "gram": dist.gram_weight}

    def loss(m: nn.Module, z_hq: torch.Tensor, z_lq: torch.Tensor, sem: torch.Tensor | None,
             gen: torch.Generator, extras: conditioning.Extras | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if extras is None:
            total, stats = distill_loss(m, teacher, z_hq, z_lq, sem, flow, dist, gen)
        else:
            bound = conditioning.bind(cfg, m, extras, gen, estimate=True)
            bound_teacher = conditioning.bind(cfg, teacher, extras, train=False)
            if isinstance(bound, conditioning.Bound) and isinstance(bound_teacher, conditioning.Bound):
                bound_teacher.degradation = bound.degradation  # the same (dropped) scores for both
            total, stats = distill_loss(bound, bound_teacher, z_hq, z_lq, sem, flow, dist, gen,
                                        keep_map=conditioning.keep_map(cfg, extras, z_lq))
            total, stats = conditioning.estimator_loss(cfg, bound, extras, total, stats)
            m = bound
        if decoded is not None:
            extra = decoded(m, z_hq, z_lq, sem, gen)
            for name, value in extra.items():
                total = total + weights[name] * value.float()
            values = torch.stack([v.detach().float() for v in extra.values()] + [total.detach()]).tolist()
            stats = {**stats, **{f"loss/{k}": v for k, v in zip(extra, values)}, "loss/distill": values[-1]}
        return total, stats

    omega = sample_omega(cfg)
    teacher_guidance = dist.guidance if omega is None else omega
    # Per sample: 2 teacher forwards, 2 student forwards with backward (x3), RCGM: N sub-steps + nothing else.
    no_grad_student = dist.num_substeps if dist.objective == "rcgm" else 2
    return Objective(
        name="student",
        loss=loss,
        uses_extras=conditioning.any_module(cfg),
        sample=lambda m, z_lq, sem, noise: sample_one_step(m, z_lq, sem, noise, omega),
        # The teacher row samples the velocity the student learns (omega, w of distill.*), so the grid
        # compares like with like; the teacher's own inference preset (flow.guidance) may differ.
        extra_samplers={"teacher": lambda m, z_lq, sem, noise: sample_euler(
            teacher, z_lq, sem, noise, steps=flow.sample_steps, guidance=teacher_guidance,
            weak_anchor=dist.weak_anchor)},
        flops_per_image=model_flops(student, cfg, parts, forward_passes=2 + 2 * 3 + no_grad_student)
        + gram_flops(cfg, parts),
    )


def build_distill(cfg: RunConfig, parts: FrozenParts, device: torch.device) -> tuple[nn.Module, Objective]:
    teacher, student = build_teacher_and_student(cfg, parts, device)
    return student, student_objective(cfg, teacher, student, parts, decoded_terms(cfg, parts, device))
