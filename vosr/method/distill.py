"""One-step distillation objective: guided teacher velocity, RCGM and shortcut targets, loss.

METHOD.md §5 (VOSR, CVPR 2026). Pure functions of tensors and models; the student is called as
``student(torch.cat([cond, x], dim=1), t, sem, r)`` and returns the average velocity
``u(x, t, r)`` from time ``t`` down to ``r`` (``u(x, t, t)`` is the instantaneous velocity); the
frozen teacher is called with ``r = None``. Path convention of ``vosr.method.flow``: t = 1 noise, t = 0 data.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from vosr.config.run import DistillConfig, FlowConfig
from vosr.method.flow import (
    ConditionDraws,
    Model,
    apply_conditions,
    draw_conditions,
    interpolate,
    per_sample,
    rand,
    randn,
    spherical_noise,
    weak_anchor,
)

_MIN_INTERVAL = 1e-6
"""Floor of ``d = t - r`` in the RCGM short-interval branch, and the slack of its test ``t < r + delta + 1e-6``
(both as the reference; the slack keeps an interval of exactly ``delta``, up to float rounding, short)."""


def _call(student: Model, x: Tensor, t: Tensor, r: Tensor, cond: Tensor, sem: Tensor | None) -> Tensor:
    """``u(x, t, r)`` under condition ``cond``/``sem``; x, cond (B, C, H, W), t, r (B,)."""
    return student(torch.cat([cond, x], dim=1), t, sem, r).to(x.dtype)


def sample_t_r(batch: int, generator: torch.Generator | None,
               device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Distillation times (METHOD.md §5): ``t = max(u1, u2)``, ``r = t (1 - g)``, ``g ~ Beta(1, 1)``.

    Returns t, r: (B,) float32 with ``0 <= r <= t < 1``.
    """
    draws = rand((3, batch), generator, device)  # u1, u2, g
    t = torch.maximum(draws[0], draws[1])
    return t, t * (1 - draws[2])


def guidance_scale(t: Tensor, cfg: DistillConfig, omega: Tensor | None = None) -> Tensor:
    """Per-sample omega (B,): ``cfg.guidance`` (or the drawn ``omega`` (B,) of a guidance-conditioned
    student) inside ``[guidance_t_start, guidance_t_end]``, 1 outside."""
    omega = torch.full_like(t, cfg.guidance, dtype=torch.float32) if omega is None else omega.float()
    if cfg.guidance_t_start is None or cfg.guidance_t_end is None:
        return omega
    inside = (t >= cfg.guidance_t_start) & (t <= cfg.guidance_t_end)
    return torch.where(inside, omega, torch.ones_like(omega))


@torch.no_grad()
def guided_teacher_velocity(teacher: Model, x_t: Tensor, t: Tensor, lq_noised: Tensor, lq_weak: Tensor,
                            sem: Tensor | None, cfg: DistillConfig, omega: Tensor | None = None) -> Tensor:
    """Guided teacher velocity ``v* = v_T(lq_weak, 0) + omega (v_T(lq_noised, sem) - v_T(lq_weak, 0))``.

    Both branches at ``(x_t, t)`` in one teacher forward of 2B. x_t, lq_*: (B, C, H, W); t: (B,);
    ``omega`` (B,) per-sample guidance (``distill.guidance_range``), None = ``cfg.guidance``.
    """
    x_in = torch.cat([torch.cat([lq_weak, x_t], dim=1), torch.cat([lq_noised, x_t], dim=1)])  # (2B, 2C, H, W)
    sem_in = None if sem is None else torch.cat([torch.zeros_like(sem), sem])  # (2B, N, D)
    v_weak, v_cond = teacher(x_in, torch.cat([t, t]), sem_in, None).to(x_t.dtype).chunk(2)
    return v_weak + per_sample(guidance_scale(t, cfg, omega), x_t) * (v_cond - v_weak)


@torch.no_grad()
def rcgm_target(student: Model, x_t: Tensor, t: Tensor, r: Tensor, v_star: Tensor, cond: Tensor,
                sem: Tensor | None, *, delta: float, num_substeps: int, clamp: float,
                u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """RCGM target for ``u(x_t, t, r)`` (METHOD.md §5), all without gradient.

    ``t_m = max(t - delta, r)``; step ``x_t -> x`` at ``t_m`` with ``v*``; N equal student sub-steps
    ``s_i -> s_{i+1}`` over ``[t_m, r]`` accumulate ``F``; then per sample, with ``d = max(t - r, 1e-6)``,
    ``(a, b) = (1, 1/d)`` if ``t < r + delta + 1e-6`` else ``(d/delta, 1/delta)``, and
    ``target = u - clamp(a u - b F - v*, -clamp, clamp)``. ``u`` (B, C, H, W) may be passed in when the
    caller already has ``u(x_t, t, r)`` (detached). Returns ``(u, target)``, both (B, C, H, W).
    """
    if u is None:
        u = _call(student, x_t, t, r, cond, sem)
    u = u.detach()
    t_m = torch.maximum(t - delta, r)  # (B,)
    x = x_t - per_sample(t - t_m, x_t) * v_star
    flow_sum = torch.zeros_like(x_t)  # F (B, C, H, W)
    for i in range(num_substeps):
        s_i = t_m + (r - t_m) * (i / num_substeps)
        s_next = t_m + (r - t_m) * ((i + 1) / num_substeps)
        step = per_sample(s_i - s_next, x_t)
        u_i = _call(student, x, s_i, s_next, cond, sem)
        x = x - step * u_i
        flow_sum = flow_sum + step * u_i
    d = torch.clamp(t - r, min=_MIN_INTERVAL)
    short = t < r + delta + _MIN_INTERVAL
    a = torch.where(short, torch.ones_like(d), d / delta)
    b = torch.where(short, 1.0 / d, torch.full_like(d, 1.0 / delta))
    correction = torch.clamp(per_sample(a, u) * u - per_sample(b, u) * flow_sum - v_star, -clamp, clamp)
    return u, u - correction


@torch.no_grad()
def shortcut_target(student: Model, x_t: Tensor, t: Tensor, r: Tensor, cond: Tensor, sem: Tensor | None) -> Tensor:
    """Shortcut target (METHOD.md §5): two half steps ``t -> m -> r`` with ``m = (t + r)/2``, averaged.

    x_t, cond: (B, C, H, W); t, r: (B,). Returns (B, C, H, W).
    """
    m = (t + r) / 2
    v1 = _call(student, x_t, t, m, cond, sem)
    x_m = x_t - per_sample((t - r) / 2, x_t) * v1
    v2 = _call(student, x_m, m, r, cond, sem)
    return (v1 + v2) / 2


@dataclass
class DistillDraws:
    """Every random draw of one distillation loss call."""

    t: Tensor
    """(B,) start times."""
    r: Tensor
    """(B,) end times, ``r <= t``."""
    eps: Tensor
    """(B, C, H, W) the noise end of the path."""
    conditions: ConditionDraws
    """Condition noise and weak flags; ``w`` is the fixed ``distill.weak_anchor``."""
    omega: Tensor | None = None
    """(B,) guidance per sample, drawn from ``distill.guidance_range`` (None without one)."""


def draw_omega(batch: int, bounds: list[float], generator: torch.Generator | None,
               device: torch.device | str) -> Tensor:
    """Per-sample guidance (B,) from ``U[lo, hi]`` (``distill.guidance_range``)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * rand((batch,), generator, device)


def default_omega(guidance: float, bounds: list[float]) -> float:
    """A guidance-conditioned student's default omega: ``distill.guidance`` inside the range, else its middle."""
    return float(guidance) if bounds[0] <= guidance <= bounds[1] else (bounds[0] + bounds[1]) / 2


def draw_distill(z_hq: Tensor, flow_cfg: FlowConfig, cfg: DistillConfig,
                 generator: torch.Generator | None) -> DistillDraws:
    """Draw (t, r), eps and the conditioning draws for a distillation loss on ``z_hq`` (B, C, H, W);
    then omega, only with ``cfg.guidance_range`` (so the other draws stay those of a plain student)."""
    t, r = sample_t_r(z_hq.shape[0], generator, z_hq.device)
    eps = randn(tuple(z_hq.shape), generator, z_hq.device).to(z_hq.dtype)
    conditions = draw_conditions(z_hq, flow_cfg, generator, w=cfg.weak_anchor, sem_drop=False)
    omega = None if cfg.guidance_range is None else draw_omega(z_hq.shape[0], cfg.guidance_range, generator,
                                                               z_hq.device)
    return DistillDraws(t=t, r=r, eps=eps, conditions=conditions, omega=omega)


def distill_loss(student: Model, teacher: Model, z_hq: Tensor, z_lq: Tensor, sem: Tensor | None,
                 flow_cfg: FlowConfig, cfg: DistillConfig, generator: torch.Generator | None,
                 draws: DistillDraws | None = None, *,
                 keep_map: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Distillation loss ``||u(x_t, t, t) - v*||^2 + lambda ||u(x_t, t, r) - sg(target)||^2`` (METHOD.md §5).

    The student sees the partially mixed input (``flow_cfg.cfg_ratio`` of the samples get
    ``cfg.weak_anchor * lq`` and zero tokens, the rest spherical-noised ``lq`` and ``sem``); the
    teacher gives ``v*`` from ``lq_noised``/``sem`` and ``lq_weak``/zeros for every sample.
    z_hq, z_lq: (B, C, H, W); sem: (B, N, D) or None; ``draws`` (else drawn with ``generator``)
    fixes every random choice; ``keep_map`` (B, 1, H, W) replaces the drawn keep ratio
    (``flow.cond_noise_map``). Returns the fp32 loss (with graph) and stats ``loss/distill``,
    ``loss/distill_v`` (r = t term), ``loss/distill_u`` (t, r term, unweighted).
    """
    if z_hq.shape != z_lq.shape:
        raise ValueError(f"distill_loss: HQ latent {tuple(z_hq.shape)} and LQ latent {tuple(z_lq.shape)} differ; "
                         "check data.scale and the LQ upsampling")
    draws = draws if draws is not None else draw_distill(z_hq, flow_cfg, cfg, generator)
    t, r = draws.t, draws.r  # (B,), (B,)
    x_t = interpolate(z_hq, draws.eps, t)  # (B, C, H, W)
    keep = draws.conditions.keep if keep_map is None else keep_map
    lq_noised = spherical_noise(z_lq, keep, draws.conditions.noise)
    lq_weak = weak_anchor(z_lq, cfg.weak_anchor)
    mixed = apply_conditions(z_lq, sem, draws.conditions, keep_map=keep_map)
    omega = draws.omega
    v_star = guided_teacher_velocity(teacher, x_t, t, lq_noised, lq_weak, sem, cfg, omega)

    # u(x_t, t, t) and u(x_t, t, r) in one student forward of 2B.
    sem_2 = None if mixed.sem is None else torch.cat([mixed.sem, mixed.sem])
    x_in = torch.cat([mixed.cond, x_t], dim=1)
    omega_kw = {} if omega is None else {"omega": torch.cat([omega, omega])}
    u_tt, u_tr = student(torch.cat([x_in, x_in]), torch.cat([t, t]), sem_2, torch.cat([t, r]), **omega_kw).chunk(2)
    if omega is not None:  # every student call of the targets sees the same per-sample omega
        student = partial(student, omega=omega)
    if cfg.objective == "rcgm":
        _, target = rcgm_target(student, x_t, t, r, v_star, mixed.cond, mixed.sem, delta=cfg.delta,
                                num_substeps=cfg.num_substeps, clamp=cfg.correction_clamp, u=u_tr.detach())
    elif cfg.objective == "shortcut":
        target = shortcut_target(student, x_t, t, r, mixed.cond, mixed.sem)
    else:
        raise ValueError(f"unknown distill.objective={cfg.objective!r}; use rcgm or shortcut")
    loss_v = (u_tt.float() - v_star.float()).pow(2).mean()
    loss_u = (u_tr.float() - target.detach().float()).pow(2).mean()
    loss = loss_v + cfg.u_weight * loss_u
    values = torch.stack([loss.detach(), loss_v.detach(), loss_u.detach()]).tolist()  # one device sync
    return loss, {"loss/distill": values[0], "loss/distill_v": values[1], "loss/distill_u": values[2]}
