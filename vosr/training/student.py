"""The student stage: RCGM / shortcut distillation of a frozen teacher into a one-step student.

The student is the teacher's architecture plus the ``r`` time input, initialised from the
teacher's EMA export (the new ``r_embedder`` keeps its own initialisation); the teacher is
frozen, in ``eval()``, outside the optimizer and ZeRO partitioning, in bf16 on GPUs. The
objective's maths (METHOD.md §5) lives in ``vosr.method.distill``; ``build_distill`` is what
``vosr.distill`` hands to the training loop.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.evaluation.metrics import load_lpips
from vosr.method.distill import distill_loss
from vosr.method.flow import one_step, randn, sample_euler, sample_one_step
from vosr.models.weights import load_vosr_weights
from vosr.training import conditioning
from vosr.training.export import R_EMBEDDER_PREFIX, export_file, load_export
from vosr.training.setup import FrozenParts, Objective, build_model, model_flops

logger = logging.getLogger(__name__)

STUDENT_ONLY_KEYS = (R_EMBEDDER_PREFIX,)


def teacher_weights_path(source: str) -> Path:
    """``distill.teacher`` may name the export itself or the teacher's run folder."""
    return export_file(source, "distill.teacher")


def build_teacher_and_student(cfg: RunConfig, parts: FrozenParts,
                              device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Frozen teacher and a student that starts from the teacher's EMA weights."""
    weights, teacher_cfg = load_export(teacher_weights_path(cfg.distill.teacher))
    if teacher_cfg is not None and teacher_cfg.model.preset != cfg.model.preset:
        logger.warning("teacher preset %s differs from model.preset=%s; shapes decide",
                       teacher_cfg.model.preset, cfg.model.preset)
    teacher = build_model(cfg, parts, with_r=False)
    # A teacher trained without a conditioning module gets it neutral (zero-initialised), as the student does.
    load_vosr_weights(teacher, weights, allow_missing=conditioning.MODULE_PREFIXES)
    teacher.requires_grad_(False).eval()
    teacher.to(device, dtype=torch.bfloat16 if device.type == "cuda" and cfg.engine.precision == "bf16" else None)
    student = build_model(cfg, parts, with_r=True)
    load_vosr_weights(student, weights, allow_missing=STUDENT_ONLY_KEYS + conditioning.MODULE_PREFIXES)
    return teacher, student


PerceptualTerm = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


def lpips_term(parts: FrozenParts, device: torch.device) -> PerceptualTerm:
    """LPIPS (AlexNet) between the decoded one-step sample and the decoded HQ latent.

    The one-step sample is taken as at inference (``t = 1, r = 0``, clean ``lq`` and tokens)
    and decoded with gradients through the frozen decoder. ``check_paths`` has made sure the
    LPIPS weights are on disk (never random or downloaded weights).
    """
    net = load_lpips(device)

    def term(student: nn.Module, z_hq: torch.Tensor, z_lq: torch.Tensor, sem: torch.Tensor | None,
             generator: torch.Generator) -> torch.Tensor:
        noise = randn(tuple(z_hq.shape), generator, z_hq.device).to(z_hq.dtype)
        z0 = one_step(student, z_lq, sem, noise)
        image = parts.autoencoder.decode(z0).float()
        with torch.no_grad():
            reference = parts.autoencoder.decode(z_hq).float().clamp(0, 1)
        return net(image * 2 - 1, reference * 2 - 1).mean()

    return term


def student_objective(cfg: RunConfig, teacher: nn.Module, student: nn.Module, parts: FrozenParts,
                      perceptual: PerceptualTerm | None = None) -> Objective:
    """RCGM/shortcut distillation, plus ``distill.lpips_weight`` x ``perceptual`` when given."""
    flow, dist = cfg.flow, cfg.distill

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
        if perceptual is not None:
            lp = perceptual(m, z_hq, z_lq, sem, gen)
            total = total + dist.lpips_weight * lp.float()
            stats = {**stats, "loss/lpips": float(lp.detach()), "loss/distill": float(total.detach())}
        return total, stats

    # Per sample: 2 teacher forwards, 2 student forwards with backward (x3), RCGM: N sub-steps + nothing else.
    no_grad_student = dist.num_substeps if dist.objective == "rcgm" else 2
    return Objective(
        name="student",
        loss=loss,
        uses_extras=conditioning.any_module(cfg),
        sample=lambda m, z_lq, sem, noise: sample_one_step(m, z_lq, sem, noise),
        # The teacher row samples the velocity the student learns (omega, w of distill.*), so the grid
        # compares like with like; the teacher's own inference preset (flow.guidance) may differ.
        extra_samplers={"teacher": lambda m, z_lq, sem, noise: sample_euler(
            teacher, z_lq, sem, noise, steps=flow.sample_steps, guidance=dist.guidance, weak_anchor=dist.weak_anchor)},
        flops_per_image=model_flops(student, cfg, parts, forward_passes=2 + 2 * 3 + no_grad_student),
    )


def build_distill(cfg: RunConfig, parts: FrozenParts, device: torch.device) -> tuple[nn.Module, Objective]:
    teacher, student = build_teacher_and_student(cfg, parts, device)
    perceptual = lpips_term(parts, device) if cfg.distill.lpips_weight > 0 else None
    return student, student_objective(cfg, teacher, student, parts, perceptual)
