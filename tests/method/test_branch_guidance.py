"""Per-branch teacher guidance (s_lr, s_sem) and the semantic-drop training branch (issue 10)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN
from tests.golden_models import golden_model
from vosr.config.run import FlowConfig
from vosr.method.flow import (
    apply_conditions,
    branch_guided_velocity,
    combine_branches,
    draw_conditions,
    draw_flow,
    flow_loss,
    guided_velocity,
    sample_euler,
    three_branch_velocity,
)

W = 0.15


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "vosr_reference_sampling.safetensors"))


def test_combine_branches_is_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    v_weak, v_lr, v_full = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    out = combine_branches(v_weak, v_lr, v_full, 0.7, -0.3)
    torch.testing.assert_close(out, v_weak + 0.7 * (v_lr - v_weak) - 0.3 * (v_full - v_lr))
    # Equal scales collapse to the single knob: the middle branch cancels.
    torch.testing.assert_close(combine_branches(v_weak, v_lr, v_full, 0.4, 0.4), v_weak + 0.4 * (v_full - v_weak))


@pytest.mark.parametrize("s", [-0.5, 0.5, 2.0])
def test_equal_scales_equal_todays_guidance(golden_dir: Path, recorded: dict[str, torch.Tensor], s: float) -> None:
    teacher = golden_model(golden_dir, "teacher")
    lq, sem, eps = (recorded[f"euler.in.{k}"] for k in ("lq", "sem", "eps"))
    t1 = torch.ones(lq.shape[0])
    today = guided_velocity(teacher, eps, t1, lq, sem, guidance=s, weak_anchor=W)
    # The dispatcher takes today's path bit for bit ...
    assert torch.equal(branch_guided_velocity(teacher, eps, t1, lq, sem, guidance=s, guidance_sem=s, weak_anchor=W),
                       today)
    # ... and the 3B forward with equal scales gives the same velocity and the recorded reference one.
    with torch.no_grad():
        three = three_branch_velocity(teacher, eps, t1, lq, sem, guidance_lr=s, guidance_sem=s, weak_anchor=W)
    torch.testing.assert_close(three, today, atol=1e-5, rtol=1e-5)
    key = f"euler.s{s:+.1f}.v_step0"
    torch.testing.assert_close(three, recorded[key], atol=1e-5, rtol=1e-5)


def test_branches_separate_lr_and_semantics(golden_dir: Path, recorded: dict[str, torch.Tensor]) -> None:
    teacher = golden_model(golden_dir, "teacher")
    lq, sem, eps = (recorded[f"euler.in.{k}"] for k in ("lq", "sem", "eps"))
    t1 = torch.ones(lq.shape[0])
    kw = dict(weak_anchor=W)
    with torch.no_grad():
        # s_lr = 1, s_sem = 0: the clean LQ with zero tokens; s_lr = s_sem = 1: the full condition.
        v_lr = three_branch_velocity(teacher, eps, t1, lq, sem, guidance_lr=1.0, guidance_sem=0.0, **kw)
        direct = teacher(torch.cat([lq, eps], dim=1), t1, torch.zeros_like(sem), None)
    torch.testing.assert_close(v_lr, direct, atol=1e-5, rtol=1e-5)
    a = branch_guided_velocity(teacher, eps, t1, lq, sem, guidance=0.5, guidance_sem=-0.5, **kw)
    b = branch_guided_velocity(teacher, eps, t1, lq, sem, guidance=0.5, guidance_sem=1.5, **kw)
    assert (a - b).abs().max() > 1e-6  # the semantic knob changes the velocity (the golden model's tokens are weak)


def test_sample_euler_per_branch(golden_dir: Path, recorded: dict[str, torch.Tensor]) -> None:
    teacher = golden_model(golden_dir, "teacher")
    lq, sem, eps = (recorded[f"euler.in.{k}"] for k in ("lq", "sem", "eps"))
    same = sample_euler(teacher, lq, sem, eps, steps=8, guidance=-0.5, guidance_sem=-0.5, weak_anchor=W)
    assert torch.equal(same, recorded["euler.s-0.5.x0"]) or torch.allclose(same, recorded["euler.s-0.5.x0"],
                                                                           atol=1e-5, rtol=1e-5)
    split = sample_euler(teacher, lq, sem, eps, steps=8, guidance=-0.5, guidance_sem=0.5, weak_anchor=W)
    assert (split - same).abs().max() > 1e-6


def test_sem_drop_zero_keeps_draws_and_positive_ratio_drops_tokens() -> None:
    lq = torch.randn(64, 3, 4, 4)
    base = draw_conditions(lq, FlowConfig(), torch.Generator().manual_seed(3))
    zero = draw_conditions(lq, FlowConfig(sem_drop_ratio=0.0), torch.Generator().manual_seed(3))
    assert base.sem_drop is None and zero.sem_drop is None
    for name in ("keep", "noise", "weak", "w"):
        assert torch.equal(getattr(base, name), getattr(zero, name))
    gen = torch.Generator().manual_seed(3)
    some = draw_conditions(lq, FlowConfig(sem_drop_ratio=0.5), gen)
    for name in ("keep", "noise", "weak", "w"):  # drawn after everything else: the old draws are unchanged
        assert torch.equal(getattr(base, name), getattr(some, name))
    assert some.sem_drop is not None and not (some.sem_drop & some.weak).any()
    assert 0.2 < some.sem_drop.float().mean() < 0.7
    sem = torch.randn(64, 5, 6)
    conds = apply_conditions(lq, sem, some)
    dropped = some.sem_drop
    assert torch.equal(conds.sem[dropped], torch.zeros_like(sem[dropped]))
    keep = ~dropped & ~some.weak
    assert torch.equal(conds.sem[keep], sem[keep])
    # Dropped samples keep the noised LQ, not the weak anchor.
    torch.testing.assert_close(conds.cond[dropped], apply_conditions(lq, sem, base).cond[dropped])


def test_flow_loss_logs_sem_drop_only_when_on() -> None:
    from tests.toy_models import ToyVelocity

    model = ToyVelocity(3, 6)
    z_hq, z_lq, sem = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4), torch.randn(8, 5, 6)
    _, stats = flow_loss(model, z_hq, z_lq, sem, FlowConfig(), torch.Generator().manual_seed(0))
    assert "flow/sem_drop_fraction" not in stats
    cfg = FlowConfig(sem_drop_ratio=1.0, cfg_ratio=0.0)
    draws = draw_flow(z_hq, cfg, torch.Generator().manual_seed(0))
    loss, stats = flow_loss(model, z_hq, z_lq, sem, cfg, None, draws=draws)
    assert stats["flow/sem_drop_fraction"] == 1.0
    loss_zero, _ = flow_loss(model, z_hq, z_lq, torch.zeros_like(sem), cfg, None, draws=draws)
    torch.testing.assert_close(loss, loss_zero)
