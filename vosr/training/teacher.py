"""The teacher stage: flow matching with partial conditioning (METHOD.md §4), validated with the
guided Euler sampler. ``build_teacher`` is what ``vosr.train`` hands to the training loop."""
from __future__ import annotations

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.config.run import FlowConfig
from vosr.method.flow import flow_loss, sample_euler
from vosr.models.weights import load_vosr_weights
from vosr.training import conditioning
from vosr.training.setup import FrozenParts, Objective, SampleFn, build_model, model_flops


def teacher_objective(cfg: RunConfig, model: nn.Module, parts: FrozenParts) -> Objective:
    """Flow matching with partial conditioning; validated with the guided Euler sampler."""
    flow = cfg.flow

    def loss(m: nn.Module, z_hq: torch.Tensor, z_lq: torch.Tensor, sem: torch.Tensor | None,
             gen: torch.Generator, extras: conditioning.Extras | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if extras is None:
            return flow_loss(m, z_hq, z_lq, sem, flow, gen)
        bound = conditioning.bind(cfg, m, extras, gen, estimate=True)
        total, stats = flow_loss(bound, z_hq, z_lq, sem, flow, gen, keep_map=conditioning.keep_map(cfg, extras, z_lq))
        return conditioning.estimator_loss(cfg, bound, extras, total, stats)

    return Objective(
        name="teacher",
        loss=loss,
        uses_extras=conditioning.any_module(cfg),
        sample=lambda m, z_lq, sem, noise: sample_euler(m, z_lq, sem, noise, steps=flow.sample_steps,
                                                        guidance=flow.guidance, weak_anchor=flow.weak_anchor),
        flops_per_image=model_flops(model, cfg, parts, forward_passes=3.0),
        guidance_grid={f"s_lr={s_lr:g} s_sem={s_sem:g}": _branch_sampler(flow, s_lr, s_sem)
                       for s_lr, s_sem in flow.val_guidance_grid},
    )


def _branch_sampler(flow: FlowConfig, s_lr: float, s_sem: float) -> SampleFn:
    """The guided Euler sampler at per-branch guidance (s_lr, s_sem)."""
    return lambda m, z_lq, sem, noise: sample_euler(m, z_lq, sem, noise, steps=flow.sample_steps, guidance=s_lr,
                                                    guidance_sem=s_sem, weak_anchor=flow.weak_anchor)


def build_teacher(cfg: RunConfig, parts: FrozenParts, device: torch.device) -> tuple[nn.Module, Objective]:
    """A fresh (or ``model.init_from``) teacher and its objective."""
    model = build_model(cfg, parts, with_r=False)
    if cfg.model.init_from:
        load_vosr_weights(model, cfg.model.init_from, allow_missing=conditioning.MODULE_PREFIXES)
    return model, teacher_objective(cfg, model, parts)
