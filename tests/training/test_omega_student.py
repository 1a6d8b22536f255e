"""A guidance-conditioned one-step student really follows omega (issue 10).

A tiny pixel-space teacher and its student are trained in-process on crops of real photos (~25 s of
CPU). The measure is the one-step output's distance to the bicubic upsample of the LR: for the teacher
it falls as omega moves from the weak branch towards the conditioned one, and the distilled student must
follow, strictly, at every step of the sweep. The test can fail: the same student before distillation
(omega input at its zero initialisation) gives one value for every omega, which the check rejects.
"""
from __future__ import annotations

import pytest
import torch

from tests.omega_tiny import (
    build,
    distance_to_bicubic,
    distill_student,
    encode,
    photo_crops,
    strictly_monotone,
    train_teacher,
)
from vosr.method.flow import sample_euler
from vosr.training.export import GUIDANCE_RANGE_KEY, load_export, read_metadata, save_export

LO, HI = -0.5, 1.0
OMEGAS = [LO + (HI - LO) * i / 4 for i in range(5)]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    cfg, parts = build(LO, HI)
    data = encode(parts, photo_crops(256, 0), 0)
    held = encode(parts, photo_crops(16, 99), 1)
    teacher = train_teacher(cfg, parts, data, 300)
    initial, student = distill_student(cfg, parts, teacher, data, 300)
    return cfg, parts, held, teacher, initial, student


def test_student_output_moves_monotonically_with_omega(trained):
    cfg, parts, held, teacher, initial, student = trained
    noise = torch.randn(held.z_lq.shape, generator=torch.Generator().manual_seed(5))
    teacher_d = [float((parts.autoencoder.decode(sample_euler(teacher, held.z_lq, None, noise, steps=8, guidance=w,
                                                              weak_anchor=cfg.distill.weak_anchor)).clamp(0, 1)
                        - held.lr_up).pow(2).mean()) for w in OMEGAS]
    assert strictly_monotone(teacher_d) and teacher_d[-1] < teacher_d[0]  # the behaviour to be learned
    before = distance_to_bicubic(initial, parts, held, OMEGAS)
    assert not strictly_monotone(before)  # the check rejects a student that ignores omega
    after = distance_to_bicubic(student, parts, held, OMEGAS)
    assert strictly_monotone(after), after
    assert after[-1] < after[0]  # same direction as the teacher: closer to the LR as omega -> 1


def test_omega_range_is_in_the_exported_weights(trained, tmp_path):
    cfg, _, _, _, _, student = trained
    path = save_export(tmp_path / "ema.safetensors", student.state_dict(), cfg)
    assert read_metadata(path)[GUIDANCE_RANGE_KEY] == f"[{LO}, {HI}]"
    _, recorded = load_export(path)
    assert recorded.model.with_omega and recorded.distill.guidance_range == [LO, HI]
