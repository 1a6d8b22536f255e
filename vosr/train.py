"""``python -m vosr.train --config CONFIG [key=value ...]``: train the multi-step VOSR teacher.

What ``slurm/train_teacher.sh`` and ``python -m vosr.launch teacher`` run. Exits 0 when done
and ``EXIT_PREEMPTED`` (75) after a preemption checkpoint, so the launcher requeues.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.flow import flow_loss, sample_euler
from vosr.loop import run_training
from vosr.models.weights import load_vosr_weights
from vosr.trainer import FrozenParts, Objective, build_model, load_cli_config, model_flops


def teacher_objective(cfg: RunConfig, model: nn.Module, parts: FrozenParts) -> Objective:
    """Flow matching with partial conditioning; validated with the guided Euler sampler."""
    flow = cfg.flow
    return Objective(
        name="teacher",
        loss=lambda m, z_hq, z_lq, sem, gen: flow_loss(m, z_hq, z_lq, sem, flow, gen),
        sample=lambda m, z_lq, sem, noise: sample_euler(m, z_lq, sem, noise, steps=flow.sample_steps,
                                                        guidance=flow.guidance, weak_anchor=flow.weak_anchor),
        flops_per_image=model_flops(model, cfg, parts, forward_passes=3.0),
    )


def build_teacher(cfg: RunConfig, parts: FrozenParts, device: torch.device) -> tuple[nn.Module, Objective]:
    """A fresh (or ``model.init_from``) teacher and its objective."""
    model = build_model(cfg, parts, with_r=False)
    if cfg.model.init_from:
        load_vosr_weights(model, cfg.model.init_from)
    return model, teacher_objective(cfg, model, parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` as for the command line."""
    cfg = load_cli_config(argv, "Train the multi-step VOSR teacher (flow matching, partial conditioning).")
    if cfg.stage != "teacher":
        raise SystemExit(f"config has stage={cfg.stage}; use python -m vosr.distill, or set stage=teacher")
    return run_training(cfg, build_teacher)


if __name__ == "__main__":
    sys.exit(main())
