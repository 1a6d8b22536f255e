"""Rectified-flow objective with restoration-oriented partial conditioning, and its samplers.

METHOD.md §4 (VOSR, CVPR 2026). Path: ``x_t = (1 - t) x_hq + t eps`` with ``t = 1`` noise and
``t = 0`` data; velocity target ``v = eps - x_hq``. The model is passed in and called as
``model(torch.cat([cond, x_t], dim=1), t, sem, r)`` and returns a velocity shaped like ``x_t``;
``r`` is ``None`` for the multi-step teacher. Every random draw goes through the given
``torch.Generator`` (drawn on the generator's device, then moved to the tensors' device).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vosr.config.run import FlowConfig

Model = Callable[..., Tensor]
"""``model(x_in (B, 2C, H, W), t (B,), sem (B, N, D) | None, r (B,) | None) -> v (B, C, H, W)``."""


@dataclass
class Conditions:
    """Per-sample model conditions after partial conditioning."""

    cond: Tensor
    """(B, C, H, W) condition latent put in front of ``x_t`` on channels."""
    sem: Tensor | None
    """(B, N, D) semantic tokens (zeros for weak samples) or None when the encoder is off."""
    weak: Tensor
    """(B,) bool: which samples got the weak anchor."""


# ----------------------------------------------------------------------------- random draws
def _draw(fn: Callable[..., Tensor], shape: tuple[int, ...], generator: torch.Generator | None,
          device: torch.device | str) -> Tensor:
    """Draw float32 ``fn(shape)`` on the generator's device, then move it to ``device``."""
    where = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """Standard normal float32 tensor of ``shape`` on ``device`` drawn with ``generator``."""
    return _draw(torch.randn, shape, generator, device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """U[0, 1) float32 tensor of ``shape`` on ``device`` drawn with ``generator``."""
    return _draw(torch.rand, shape, generator, device)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) in ``like``'s dtype, to broadcast over a (B, ...) tensor."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------- path
def sample_time(batch: int, cfg: FlowConfig, generator: torch.Generator | None,
                device: torch.device | str) -> Tensor:
    """Training times (B,) in [0, 1): uniform, or sigmoid(N(logit_mean, logit_std)) (logit-normal)."""
    if cfg.time_sampling == "uniform":
        return rand((batch,), generator, device)
    if cfg.time_sampling == "logit_normal":
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * randn((batch,), generator, device))
    raise ValueError(f"unknown flow.time_sampling={cfg.time_sampling!r}; use uniform or logit_normal")


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Rectified-flow path ``x_t = (1 - t) x0 + t noise``; x0, noise (B, ...), t (B,)."""
    if x0.shape != noise.shape:
        raise ValueError(f"interpolate: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ")
    t_b = per_sample(t, x0)  # (B, 1, 1, 1)
    return (1 - t_b) * x0 + t_b * noise


# ----------------------------------------------------------------------------- conditions
def noise_condition(lq: Tensor, cfg: FlowConfig, generator: torch.Generator | None) -> Tensor:
    """Spherical condition noise ``a lq + sqrt(1 - a^2) n``, ``a = sigmoid(N(mean, std))`` per sample.

    Keeps unit variance for unit-variance ``lq`` (METHOD.md §4). lq: (B, C, H, W).
    """
    a = torch.sigmoid(cfg.cond_noise_mean + cfg.cond_noise_std * randn((lq.shape[0],), generator, lq.device))
    n = randn(tuple(lq.shape), generator, lq.device).to(lq.dtype)  # (B, C, H, W)
    a_b = per_sample(a, lq)
    return a_b * lq + torch.sqrt(1 - a_b * a_b) * n


def weak_anchor(lq: Tensor, w: Tensor | float) -> Tensor:
    """Weak anchor ``w * lq``; ``w`` a float or a per-sample (B,) tensor."""
    if isinstance(w, Tensor):
        return per_sample(w, lq) * lq
    return w * lq


def zero_semantic(sem: Tensor | None) -> Tensor | None:
    """Zeros in place of the semantic tokens (they still pass the model's LayerNorm/MLP); None stays None."""
    return None if sem is None else torch.zeros_like(sem)


def mix_conditions(cond: Tensor, weak_cond: Tensor, sem: Tensor | None, weak: Tensor) -> Conditions:
    """Per sample: ``weak_cond`` and zero tokens where ``weak`` (B,) is True, else ``cond`` and ``sem``."""
    cond_mixed = torch.where(per_sample(weak, cond).bool(), weak_cond, cond)
    sem_mixed = None if sem is None else torch.where(per_sample(weak, sem).bool(), torch.zeros_like(sem), sem)
    return Conditions(cond=cond_mixed, sem=sem_mixed, weak=weak)


def partial_condition(lq: Tensor, sem: Tensor | None, cfg: FlowConfig,
                      generator: torch.Generator | None) -> Conditions:
    """Partial conditioning (METHOD.md §4): spherical-noised ``lq`` with full ``sem``, except a
    ``cfg.cfg_ratio`` fraction of samples that get ``w lq`` (``w ~ U[weak_min, weak_max]``, no
    noise) and zero semantic tokens. lq: (B, C, H, W); sem: (B, N, D) or None.
    """
    batch = lq.shape[0]
    noised = noise_condition(lq, cfg, generator)
    weak = rand((batch,), generator, lq.device) < cfg.cfg_ratio  # (B,) bool
    w = cfg.weak_min + (cfg.weak_max - cfg.weak_min) * rand((batch,), generator, lq.device)
    return mix_conditions(noised, weak_anchor(lq, w), sem, weak)


# ----------------------------------------------------------------------------- loss
def flow_loss(model: Model, z_hq: Tensor, z_lq: Tensor, sem: Tensor | None, cfg: FlowConfig,
              generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
    """Teacher flow-matching loss: MSE between ``model([c, x_t], t, s)`` and ``v = eps - z_hq``.

    z_hq, z_lq: (B, C, H, W) latents on one grid; sem: (B, N, D) or None. Returns the scalar
    loss (fp32, with graph) and stats ``loss/flow`` and ``flow/weak_fraction``.
    """
    if z_hq.shape != z_lq.shape:
        raise ValueError(f"flow_loss: HQ latent {tuple(z_hq.shape)} and LQ latent {tuple(z_lq.shape)} differ; "
                         "check data.scale and the LQ upsampling")
    batch = z_hq.shape[0]
    t = sample_time(batch, cfg, generator, z_hq.device)  # (B,)
    noise = randn(tuple(z_hq.shape), generator, z_hq.device).to(z_hq.dtype)  # (B, C, H, W)
    x_t = interpolate(z_hq, noise, t)
    target = noise - z_hq  # (B, C, H, W)
    conds = partial_condition(z_lq, sem, cfg, generator)
    v_pred = model(torch.cat([conds.cond, x_t], dim=1), t, conds.sem, None)  # (B, C, H, W)
    loss = (v_pred.float() - target.float()).pow(2).mean()
    values = torch.stack([loss.detach(), conds.weak.float().mean()]).tolist()  # one device sync
    return loss, {"loss/flow": values[0], "flow/weak_fraction": values[1]}


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def guided_velocity(model: Model, x_t: Tensor, t: Tensor, z_lq: Tensor, sem: Tensor | None, *,
                    guidance: float, weak_anchor: float) -> Tensor:
    """Guided velocity ``v_weak + s (v_cond - v_weak)`` (METHOD.md §4).

    The conditioned branch sees the clean ``z_lq`` and ``sem``; the weak branch ``w z_lq`` and
    zero tokens. ``s == 1`` (``s == 0``) runs only the conditioned (weak) branch; otherwise both
    run in one batched forward of 2B. x_t, z_lq: (B, C, H, W); t: (B,).
    """
    weak_cond = z_lq * weak_anchor
    if guidance == 1.0:
        return model(torch.cat([z_lq, x_t], dim=1), t, sem, None)
    if guidance == 0.0:
        return model(torch.cat([weak_cond, x_t], dim=1), t, zero_semantic(sem), None)
    x_in = torch.cat([torch.cat([weak_cond, x_t], dim=1), torch.cat([z_lq, x_t], dim=1)])  # (2B, 2C, H, W)
    sem_in = None if sem is None else torch.cat([torch.zeros_like(sem), sem])  # (2B, N, D)
    v_weak, v_cond = model(x_in, torch.cat([t, t]), sem_in, None).chunk(2)
    return v_weak + guidance * (v_cond - v_weak)


@torch.no_grad()
def sample_euler(model: Model, z_lq: Tensor, sem: Tensor | None, noise: Tensor, *, steps: int,
                 guidance: float, weak_anchor: float, progress: bool = False) -> Tensor:
    """Euler ODE solve from ``noise`` at t = 1 to a clean latent at t = 0 in ``steps`` uniform steps.

    z_lq, noise: (B, C, H, W); returns (B, C, H, W) in ``noise``'s dtype.
    """
    if steps < 1:
        raise ValueError(f"sample_euler: steps={steps} must be >= 1; change flow.sample_steps")
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = noise
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="euler", leave=False)
    for k in iterator:
        t = torch.full((x.shape[0],), times[k], device=x.device, dtype=torch.float32)
        v = guided_velocity(model, x, t, z_lq, sem, guidance=guidance, weak_anchor=weak_anchor)
        x = x - (times[k] - times[k + 1]) * v.to(x.dtype)
    return x


def one_step(model: Model, z_lq: Tensor, sem: Tensor | None, noise: Tensor) -> Tensor:
    """One-step student sample ``x0 = eps - u([lq, eps], t = 1, r = 0)`` (METHOD.md §5); no guidance.

    Differentiable (the distillation's LPIPS term trains through it); ``sample_one_step`` is the
    no-grad version inference uses.
    """
    batch = noise.shape[0]
    t = torch.ones(batch, device=noise.device)
    r = torch.zeros(batch, device=noise.device)
    return noise - model(torch.cat([z_lq, noise], dim=1), t, sem, r).to(noise.dtype)


sample_one_step = torch.no_grad()(one_step)
