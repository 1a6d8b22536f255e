"""A tiny pixel-space teacher and its guidance-conditioned one-step student, trained in-process on crops
of real photos in well under a minute of CPU (issue 10's monotonicity test and its measurement script)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tests.conftest import real_photos
from tests.export_helpers import tiny_config
from vosr.config import RunConfig
from vosr.method.distill import distill_loss
from vosr.method.flow import flow_loss, sample_one_step
from vosr.models.weights import load_vosr_weights
from vosr.training.setup import FrozenParts, build_frozen_parts, build_model
from vosr.training.student import STUDENT_ONLY_KEYS, student_config

CROP = 32


@dataclass
class Batch:
    hr: torch.Tensor
    z_hq: torch.Tensor
    z_lq: torch.Tensor
    lr_up: torch.Tensor


def tiny_run_config(lo: float, hi: float, unshuffle: int = 4) -> RunConfig:
    """configs/tiny.yaml in pixel space without the semantic encoder, bicubic x4, 32-px crops, omega in [lo, hi].

    ``unshuffle`` 4 (the tiny config's) is fastest but gives tokens of 192 noise values for a width of 64, so
    outputs keep visible noise; 2 (48 values a token) samples far cleaner at about 4x the cost.
    """
    return tiny_config("semantic.kind=none", "degradation=degradation/bicubic.yaml", f"data.crop_size={CROP}",
                       f"distill.guidance_range=[{lo},{hi}]", "distill.teacher=unused",
                       f"autoencoder.pixel_unshuffle={unshuffle}")


def photo_crops(count: int, seed: int) -> torch.Tensor:
    """(count, 3, CROP, CROP) random crops of the scikit-image photos, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    photos = [torch.from_numpy(p[..., :3].copy()).permute(2, 0, 1).float() / 255 for p in real_photos()]
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        y = int(torch.randint(0, img.shape[1] - CROP, (1,), generator=gen))
        x = int(torch.randint(0, img.shape[2] - CROP, (1,), generator=gen))
        out.append(img[:, y:y + CROP, x:x + CROP])
    return torch.stack(out)


def encode(parts: FrozenParts, hr: torch.Tensor, seed: int) -> Batch:
    z_hq, z_lq, _, lr_up = parts.encode_pair(hr, torch.Generator().manual_seed(seed), train=False)
    return Batch(hr=hr, z_hq=z_hq, z_lq=z_lq, lr_up=lr_up)


def _fit(model: nn.Module, steps: int, lr: float, data: Batch, batch: int, loss_fn, seed: int) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.z_hq.shape[0], (batch,), generator=gen)
        loss = loss_fn(model, data.z_hq[idx], data.z_lq[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def train_teacher(cfg: RunConfig, parts: FrozenParts, data: Batch, steps: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    teacher = build_model(cfg, parts, with_r=False)
    _fit(teacher, steps, 3e-3, data, 16,
         lambda m, zh, zl, g: flow_loss(m, zh, zl, None, cfg.flow, g)[0], seed)
    return teacher.requires_grad_(False)


def distill_student(cfg: RunConfig, parts: FrozenParts, teacher: nn.Module, data: Batch, steps: int,
                    seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(the untrained student as initialised from the teacher, the distilled one)."""
    torch.manual_seed(seed)
    student = build_model(student_config(cfg), parts, with_r=True)
    load_vosr_weights(student, teacher.state_dict(), allow_missing=STUDENT_ONLY_KEYS)
    initial = build_model(student_config(cfg), parts, with_r=True)
    initial.load_state_dict(student.state_dict())
    _fit(student, steps, 2e-3, data, 16,
         lambda m, zh, zl, g: distill_loss(m, teacher, zh, zl, None, cfg.flow, cfg.distill, g)[0], seed + 1)
    return initial.eval(), student.requires_grad_(False)


@torch.no_grad()
def one_step_images(student: nn.Module, parts: FrozenParts, data: Batch, omega: float, seed: int = 5) -> torch.Tensor:
    noise = torch.randn(data.z_lq.shape, generator=torch.Generator().manual_seed(seed))
    return parts.autoencoder.decode(sample_one_step(student, data.z_lq, None, noise, omega)).clamp(0, 1)


def distance_to_bicubic(student: nn.Module, parts: FrozenParts, data: Batch, omegas: list[float]) -> list[float]:
    """Mean squared distance of the one-step outputs at each omega to the bicubic upsample of the LR."""
    return [float((one_step_images(student, parts, data, w) - data.lr_up).pow(2).mean()) for w in omegas]


def strictly_monotone(values: list[float], rel: float = 1e-3) -> bool:
    """All successive differences share one sign and each exceeds ``rel`` of the values' scale."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    scale = max(abs(v) for v in values) * rel
    return all(d > scale for d in diffs) or all(d < -scale for d in diffs)


def build(lo: float, hi: float, unshuffle: int = 4) -> tuple[RunConfig, FrozenParts]:
    cfg = tiny_run_config(lo, hi, unshuffle)
    return cfg, build_frozen_parts(cfg, torch.device("cpu"))

