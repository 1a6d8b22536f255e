"""The training losses reproduce the reference implementation on its recorded draws (tests/golden).

Every random draw of the reference (times, condition noise, weak flags, eps) is fed to vosr's own
``flow_loss`` / ``distill_loss`` through their ``draws`` argument; nothing is re-derived here.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN
from tests.golden_models import golden_model
from vosr.config.run import DistillConfig, FlowConfig
from vosr.method.distill import DistillDraws, distill_loss, guided_teacher_velocity, rcgm_target
from vosr.method.flow import ConditionDraws, FlowDraws, apply_conditions, flow_loss, interpolate, spherical_noise

GRAD_TOL = {"atol": 1e-8, "rtol": 1e-4}  # gradients are 1e-3..1e-2; the reference's own fp32 noise is 4e-9
# The recorded RCGM settings: omega 0.5 everywhere, delta 0.01, N = 2, lambda 1, clamp 1, w = 0.1.
DISTILL = DistillConfig(guidance=0.5, delta=0.01, num_substeps=2, u_weight=1.0, correction_clamp=1.0, weak_anchor=0.1)


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "vosr_reference_training.safetensors"))


def _grads(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].grad for n in names}


def test_golden_teacher_flow_loss(recorded: dict[str, torch.Tensor]) -> None:
    g = {k[len("teacher_loss."):]: v for k, v in recorded.items() if k.startswith("teacher_loss.")}
    teacher = golden_model(GOLDEN, "teacher").train()
    batch = g["in.t"].shape[0]
    # The reference draws one w per batch; vosr draws one per sample, so every sample gets the recorded one.
    conds = ConditionDraws(keep=g["in.a"], noise=g["in.cond_noise"], weak=g["in.weak"].bool(),
                           w=g["in.w"].expand(batch).clone())
    draws = FlowDraws(t=g["in.t"], eps=g["in.eps"], conditions=conds)
    torch.testing.assert_close(interpolate(g["in.hq"], g["in.eps"], g["in.t"]), g["mid.x_t"], atol=1e-6, rtol=0)
    mixed = apply_conditions(g["in.lq"], g["in.sem"], conds)
    torch.testing.assert_close(mixed.cond, g["mid.lq_mixed"], atol=1e-5, rtol=0)
    loss, stats = flow_loss(teacher, g["in.hq"], g["in.lq"], g["in.sem"], FlowConfig(), None, draws=draws)
    torch.testing.assert_close(loss.detach(), g["out.loss"], atol=1e-7, rtol=1e-5)
    assert stats["flow/weak_fraction"] == pytest.approx(0.5)  # samples 1 and 3
    loss.backward()
    names = ["x_embedder.proj.weight", "final_layer.linear.weight"]
    for name, grad in _grads(teacher, names).items():
        torch.testing.assert_close(grad, g[f"out.grad.{name}"], **GRAD_TOL)


def test_golden_distill_loss(recorded: dict[str, torch.Tensor]) -> None:
    g = {k[len("distill."):]: v for k, v in recorded.items() if k.startswith("distill.")}
    teacher = golden_model(GOLDEN, "teacher").requires_grad_(False)
    student = golden_model(GOLDEN, "student").train()
    t, r = g["in.t"], g["in.r"]
    conds = ConditionDraws(keep=g["in.a"], noise=g["in.cond_noise"], weak=g["in.weak"].bool(),
                           w=torch.full_like(t, DISTILL.weak_anchor))
    draws = DistillDraws(t=t, r=r, eps=g["in.eps"], conditions=conds)
    hq, lq, sem = g["in.hq"], g["in.lq"], g["in.sem"]

    # The conditions and v* from the same draws.
    x_t = interpolate(hq, g["in.eps"], t)
    torch.testing.assert_close(x_t, g["mid.x_t"], atol=1e-6, rtol=0)
    lq_noised = spherical_noise(lq, conds.keep, conds.noise)
    torch.testing.assert_close(lq_noised, g["mid.lq_noised"], atol=1e-5, rtol=0)
    mixed = apply_conditions(lq, sem, conds)
    torch.testing.assert_close(mixed.cond, g["mid.lq_mixed"], atol=1e-5, rtol=0)
    v_star = guided_teacher_velocity(teacher, x_t, t, lq_noised, DISTILL.weak_anchor * lq, sem, DISTILL)
    torch.testing.assert_close(v_star, g["out.v_star"], atol=1e-5, rtol=1e-5)

    # The two student outputs and the RCGM target.
    with torch.no_grad():
        x_in = torch.cat([mixed.cond, x_t], dim=1)
        torch.testing.assert_close(student(x_in, t, mixed.sem, t), g["out.u_tt"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(student(x_in, t, mixed.sem, r), g["out.u_tr"], atol=1e-5, rtol=1e-5)
    _, target = rcgm_target(student, x_t, t, r, v_star, mixed.cond, mixed.sem, delta=DISTILL.delta,
                            num_substeps=DISTILL.num_substeps, clamp=DISTILL.correction_clamp)
    torch.testing.assert_close(target, g["out.rcgm_target"], atol=1e-5, rtol=1e-5)

    # The whole loss, its terms and the student's gradients.
    loss, stats = distill_loss(student, teacher, hq, lq, sem, FlowConfig(), DISTILL, None, draws=draws)
    torch.testing.assert_close(loss.detach(), g["out.loss"], atol=1e-7, rtol=1e-5)
    assert stats["loss/distill_v"] == pytest.approx(float(g["out.loss_v"]), rel=1e-5, abs=1e-8)
    assert stats["loss/distill_u"] == pytest.approx(float(g["out.loss_u"]), rel=1e-5, abs=1e-8)
    loss.backward()
    names = ["x_embedder.proj.weight", "final_layer.linear.weight", "r_embedder.mlp.2.weight"]
    for name, grad in _grads(student, names).items():
        torch.testing.assert_close(grad, g[f"out.grad.{name}"], **GRAD_TOL)
    assert all(p.grad is None for p in teacher.parameters())
