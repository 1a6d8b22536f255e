"""Properties of the one-step distillation objective (METHOD.md §5) on toy flows with known answers."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from tests import toy_models
from tests.golden_models import golden_model
from vosr.config.run import DistillConfig, FlowConfig
from vosr.method.distill import (
    distill_loss,
    guided_teacher_velocity,
    rcgm_target,
    sample_t_r,
    shortcut_target,
)

B, C, H, W, N, D = 4, 2, 4, 4, 3, 5


class LinearFlowOracle(nn.Module):
    """Exact average velocity of the straight flow to one data point x0: ``u(x, t, r) = (x - x0) / t`` for any r."""

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.scale = nn.Parameter(torch.ones((), dtype=x0.dtype))  # something to train

    def forward(self, x_in: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        x = x_in[:, self.x0.shape[1]:]
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1)
        return self.scale * (x - x0) / t.to(x.dtype).clamp(min=1e-3).view(-1, 1, 1, 1)


ToyStudent = functools.partial(toy_models.ToyStudent, C, D)


def _batch(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    eps = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    lq = x0 + 0.3 * torch.randn(B, C, H, W, generator=g, dtype=dtype)
    sem = torch.randn(B, N, D, generator=g, dtype=dtype)
    return x0, eps, lq, sem


def _rcgm_reference(student: nn.Module, x_t: Tensor, t: Tensor, r: Tensor, v_star: Tensor, cond: Tensor,
                    sem: Tensor, delta: float, n: int, clamp: float) -> Tensor:
    """METHOD.md §5 written out one sample at a time with python scalars."""
    out = []
    for k in range(x_t.shape[0]):
        tk, rk = float(t[k]), float(r[k])

        def call(x: Tensor, a: float, b: float, k: int = k) -> Tensor:
            return student(torch.cat([cond[k:k + 1], x], 1), torch.tensor([a], dtype=x.dtype), sem[k:k + 1],
                           torch.tensor([b], dtype=x.dtype))

        u = call(x_t[k:k + 1], tk, rk)
        t_m = max(tk - delta, rk)
        x = x_t[k:k + 1] - (tk - t_m) * v_star[k:k + 1]
        f = torch.zeros_like(x)
        for i in range(n):
            s_i, s_j = t_m + (rk - t_m) * i / n, t_m + (rk - t_m) * (i + 1) / n
            u_i = call(x, s_i, s_j)
            x, f = x - (s_i - s_j) * u_i, f + (s_i - s_j) * u_i
        d = max(tk - rk, 1e-6)
        a, b = (1.0, 1.0 / d) if tk < rk + delta else (d / delta, 1.0 / delta)
        out.append(u - torch.clamp(a * u - b * f - v_star[k:k + 1], -clamp, clamp))
    return torch.cat(out)


def test_sample_t_r_ranges_and_distribution() -> None:
    t, r = sample_t_r(20000, torch.Generator().manual_seed(0), "cpu")
    assert t.shape == r.shape == (20000,)
    assert torch.all(r >= 0) and torch.all(r <= t) and torch.all(t < 1)
    assert abs(float(t.mean()) - 2 / 3) < 0.01  # max of two uniforms: density 2t
    assert abs(float((r / t).mean()) - 0.5) < 0.01  # 1 - g with g ~ U(0, 1)
    t2, r2 = sample_t_r(20000, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(t, t2) and torch.equal(r, r2)


def test_guided_teacher_velocity_one_batched_forward_and_window() -> None:
    x0, x_t, lq, sem = _batch()
    t = torch.tensor([0.9, 0.6, 0.3, 0.1])
    teacher = ToyStudent(seed=3)
    lq_noised, lq_weak = lq + 0.1, 0.1 * lq
    v = guided_teacher_velocity(teacher, x_t, t, lq_noised, lq_weak, sem, DistillConfig(guidance=0.5))
    assert teacher.calls == [(2 * B, True)]
    v_cond = teacher(torch.cat([lq_noised, x_t], 1), t, sem, None)
    v_weak = teacher(torch.cat([lq_weak, x_t], 1), t, torch.zeros_like(sem), None)
    torch.testing.assert_close(v, v_weak + 0.5 * (v_cond - v_weak))
    cfg = DistillConfig(guidance=0.5, guidance_t_start=0.2, guidance_t_end=0.7)
    v_win = guided_teacher_velocity(teacher, x_t, t, lq_noised, lq_weak, sem, cfg)
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(v_win[inside], v[inside])
    torch.testing.assert_close(v_win[~inside], v_cond[~inside])  # omega = 1 outside the window
    assert guided_teacher_velocity(teacher, x_t, t, lq_noised, lq_weak, None, cfg).shape == x_t.shape


def test_targets_equal_u_for_exact_average_velocity() -> None:
    x0, eps, lq, sem = _batch(torch.float64)
    t = torch.tensor([0.9, 0.5, 0.3, 0.05], dtype=torch.float64)
    r = torch.tensor([0.2, 0.495, 0.0, 0.0], dtype=torch.float64)  # sample 1 is in the t < r + delta branch
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    student = LinearFlowOracle(x0)
    v_star = eps - x0  # the exact velocity
    u, target = rcgm_target(student, x_t, t, r, v_star, lq, sem, delta=0.01, num_substeps=2, clamp=1.0)
    torch.testing.assert_close(u, v_star, atol=1e-10, rtol=0)
    torch.testing.assert_close(target, u, atol=1e-10, rtol=0)  # RCGM correction is zero
    torch.testing.assert_close(shortcut_target(student, x_t, t, r, lq, sem), u, atol=1e-10, rtol=0)


@pytest.mark.parametrize("num_substeps", [1, 2, 3])
def test_rcgm_matches_per_sample_reference(num_substeps: int) -> None:
    # float64 throughout: the 1/delta factors amplify rounding of float32 times
    x0, x_t, lq, sem = _batch(torch.float64)
    t = torch.tensor([0.9, 0.5, 0.3, 0.05], dtype=torch.float64)
    r = torch.tensor([0.2, 0.495, 0.0, 0.0], dtype=torch.float64)
    v_star = 0.5 * torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    student = ToyStudent().double()
    u, target = rcgm_target(student, x_t, t, r, v_star, lq, sem, delta=0.01, num_substeps=num_substeps, clamp=1.0)
    assert [c[0] for c in student.calls] == [B] * (1 + num_substeps)
    expected = _rcgm_reference(student, x_t, t, r, v_star, lq, sem, 0.01, num_substeps, 1.0)
    torch.testing.assert_close(target, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(u, student(torch.cat([lq, x_t], 1), t, sem, r))
    _, clamped = rcgm_target(student, x_t, t, r, v_star + 5, lq, sem, delta=0.01, num_substeps=2, clamp=0.3)
    assert float((clamped - u).abs().max()) <= 0.3 + 1e-6
    _, given = rcgm_target(student, x_t, t, r, v_star, lq, sem, delta=0.01, num_substeps=num_substeps,
                           clamp=1.0, u=u)
    torch.testing.assert_close(given, target)


def test_shortcut_matches_two_half_steps() -> None:
    _, x_t, lq, sem = _batch()
    t, r = torch.tensor([0.9, 0.5, 0.3, 0.05]), torch.tensor([0.2, 0.495, 0.0, 0.0])
    student = ToyStudent()
    target = shortcut_target(student, x_t, t, r, lq, sem)
    m = (t + r) / 2
    v1 = student(torch.cat([lq, x_t], 1), t, sem, m)
    v2 = student(torch.cat([lq, x_t - ((t - r) / 2).view(-1, 1, 1, 1) * v1], 1), m, sem, r)
    torch.testing.assert_close(target, (v1 + v2) / 2)


@pytest.mark.parametrize("objective", ["rcgm", "shortcut"])
def test_distill_loss_zero_for_exact_student_and_teacher(objective: str) -> None:
    x0, _, lq, sem = _batch(torch.float64)
    student, teacher = LinearFlowOracle(x0), LinearFlowOracle(x0)
    cfg = DistillConfig(objective=objective)
    loss, stats = distill_loss(student, teacher, x0, lq, sem, FlowConfig(), cfg, torch.Generator().manual_seed(1))
    # float32 times: rounding amplified by 1/delta leaves ~1e-12; a wrong target gives O(1)
    assert stats["loss/distill_v"] < 1e-20 and stats["loss/distill_u"] < 1e-9
    assert float(loss.detach()) < 1e-9


@pytest.mark.parametrize("objective", ["rcgm", "shortcut"])
def test_distill_loss_trains_student_only(objective: str) -> None:
    x0, _, lq, sem = _batch()
    student, teacher = ToyStudent(seed=1), ToyStudent(seed=2)
    teacher.requires_grad_(False)
    cfg = DistillConfig(objective=objective, u_weight=0.7)
    loss, stats = distill_loss(student, teacher, x0, lq, sem, FlowConfig(cfg_ratio=0.5), cfg,
                               torch.Generator().manual_seed(2))
    loss.backward()
    assert student.conv.weight.grad is not None and float(student.conv.weight.grad.abs().sum()) > 0
    assert teacher.calls == [(2 * B, True)]  # one batched guided forward
    assert student.calls[0] == (2 * B, False)  # u(t, t) and u(t, r) in one forward
    expected = stats["loss/distill_v"] + 0.7 * stats["loss/distill_u"]
    assert abs(stats["loss/distill"] - expected) < 1e-5 and abs(float(loss.detach()) - expected) < 1e-5
    again, _ = distill_loss(ToyStudent(seed=1), teacher, x0, lq, sem, FlowConfig(cfg_ratio=0.5), cfg,
                            torch.Generator().manual_seed(2))
    assert torch.equal(loss.detach(), again.detach())
    no_sem, _ = distill_loss(student, teacher, x0, lq, None, FlowConfig(), cfg, None)
    assert torch.isfinite(no_sem)
    with pytest.raises(ValueError, match="data.scale"):
        distill_loss(student, teacher, x0, lq[..., :2], sem, FlowConfig(), cfg, None)


def test_golden_distill_targets(golden_dir: Path) -> None:
    """u, RCGM and shortcut targets of the reference implementation for its tiny student (shared/golden)."""
    student = golden_model(golden_dir, "student")
    g = load_file(str(golden_dir / "vosr_reference_distill_targets.safetensors"))
    with safe_open(str(golden_dir / "vosr_reference_distill_targets.safetensors"), "pt") as f:
        rcgm = json.loads(f.metadata()["rcgm"])
    x_t, cond, sem, t, r, v_star = (g[f"in.{k}"] for k in ("x_t", "lq_mixed", "z_mixed", "t", "r", "v_star"))
    u, target = rcgm_target(student, x_t, t, r, v_star, cond, sem, delta=rcgm["delta"],
                            num_substeps=rcgm["n_substeps"], clamp=1.0)
    torch.testing.assert_close(u, g["out.u"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target, g["out.rcgm_target"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shortcut_target(student, x_t, t, r, cond, sem), g["out.shortcut_target"],
                               atol=1e-5, rtol=1e-5)


def _tiny_pair(device: str) -> tuple[nn.Module, nn.Module]:
    from vosr.config.run import ModelConfig
    from vosr.models.dit import build_dit

    torch.manual_seed(0)
    teacher = build_dit(ModelConfig(preset="tiny"), latent_channels=C, semantic_dim=D, input_size=H)
    student = build_dit(ModelConfig(preset="tiny", with_r=True), latent_channels=C, semantic_dim=D, input_size=H)
    student.load_state_dict(teacher.state_dict(), strict=False)  # teacher init; r branch stays its own
    return student.to(device), teacher.to(device).eval().requires_grad_(False)


def _end_to_end(device: str, generator: torch.Generator | None) -> None:
    from vosr.method.flow import flow_loss, sample_euler, sample_one_step

    student, teacher = _tiny_pair(device)
    x0, eps, lq, sem = (x.to(device) for x in _batch())
    loss, stats = flow_loss(teacher.requires_grad_(True), x0, lq, sem, FlowConfig(), generator)
    loss.backward()
    teacher.requires_grad_(False)
    for objective in ("rcgm", "shortcut"):
        loss, stats = distill_loss(student, teacher, x0, lq, sem, FlowConfig(), DistillConfig(objective=objective),
                                   generator)
        loss.backward()
        assert torch.isfinite(loss) and stats["loss/distill_u"] >= 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    out = sample_euler(teacher, lq, sem, eps, steps=3, guidance=-0.5, weak_anchor=0.15)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    assert torch.isfinite(sample_one_step(student, lq, sem, eps)).all()


def test_tiny_dit_end_to_end_cpu() -> None:
    """flow_loss, distill_loss (both targets), the samplers, with the real tiny transformer."""
    _end_to_end("cpu", torch.Generator().manual_seed(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_dit_end_to_end_cuda_with_cpu_and_cuda_generators() -> None:
    _end_to_end("cuda", torch.Generator().manual_seed(0))
    _end_to_end("cuda", torch.Generator(device="cuda").manual_seed(0))
    _end_to_end("cuda", None)
