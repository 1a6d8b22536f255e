"""Rectified-flow objective with restoration-oriented partial conditioning, and its samplers.

METHOD.md §4 (VOSR, CVPR 2026). Path: ``x_t = (1 - t) x_hq + t eps`` with ``t = 1`` noise and
``t = 0`` data; velocity target ``v = eps - x_hq``. The model is passed in and called as
``model(torch.cat([cond, x_t], dim=1), t, sem, r)`` and returns a velocity shaped like ``x_t``;
``r`` is ``None`` for the multi-step teacher. Every random draw goes through the given
``torch.Generator`` (drawn on the generator's device, then moved to the tensors' device).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
@dataclass
class ConditionDraws:
    """The random draws of partial conditioning for one batch (recorded draws can be fed back in)."""

    keep: Tensor
    """(B,) share ``a`` of the LQ latent kept by the spherical condition noise."""
    noise: Tensor
    """(B, C, H, W) the noise ``n`` mixed into the LQ latent."""
    weak: Tensor
    """(B,) bool: which samples get the weak anchor."""
    w: Tensor
    """(B,) weak-anchor weight of each sample."""
    sem_drop: Tensor | None = None
    """(B,) bool: which non-weak samples keep the noised LQ but get zero tokens (``flow.sem_drop_ratio``);
    None when that ratio is 0 (nothing drawn, so the other draws stay those of older runs)."""


def draw_conditions(lq: Tensor, cfg: FlowConfig, generator: torch.Generator | None,
                    w: float | None = None, *, sem_drop: bool = True) -> ConditionDraws:
    """Draw ``a = sigmoid(N(mean, std))``, ``n``, the weak flags (``cfg.cfg_ratio``) and ``w``.

    ``w`` is drawn per sample from ``U[weak_min, weak_max]`` unless a fixed value is given (the
    distillation's). lq: (B, C, H, W); the draw order is a, n, weak, w, then the semantic-drop
    flags only when ``cfg.sem_drop_ratio > 0`` and ``sem_drop`` (the distillation passes False).
    """
    batch = lq.shape[0]
    keep = torch.sigmoid(cfg.cond_noise_mean + cfg.cond_noise_std * randn((batch,), generator, lq.device))
    noise = randn(tuple(lq.shape), generator, lq.device).to(lq.dtype)  # (B, C, H, W)
    weak = rand((batch,), generator, lq.device) < cfg.cfg_ratio  # (B,) bool
    if w is None:
        w_b = cfg.weak_min + (cfg.weak_max - cfg.weak_min) * rand((batch,), generator, lq.device)
    else:
        w_b = torch.full((batch,), float(w), device=lq.device)
    drop = None
    if sem_drop and cfg.sem_drop_ratio > 0:
        drop = (rand((batch,), generator, lq.device) < cfg.sem_drop_ratio) & ~weak  # (B,) bool
    return ConditionDraws(keep=keep, noise=noise, weak=weak, w=w_b, sem_drop=drop)


def spherical_noise(lq: Tensor, keep: Tensor, noise: Tensor) -> Tensor:
    """``a lq + sqrt(1 - a^2) n`` per sample (METHOD.md §4): unit variance kept for unit-variance ``lq``.

    ``keep`` is (B,) (one ``a`` per sample) or a spatial map (B, 1, H, W) (``gradient_keep_map``).
    """
    a_b = per_sample(keep, lq) if keep.dim() == 1 else keep.to(device=lq.device, dtype=lq.dtype)
    return a_b * lq + torch.sqrt(1 - a_b * a_b) * noise


# ----------------------------------------------------------------------------- region-adaptive noise
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_FLAT = 1e-6
"""Gradient magnitudes below this are rounding noise (one 8-bit level step gives ~2e-3)."""
_PEAK_FLOOR = 1e-3
"""Normaliser floor: an almost flat image (peak below it) keeps most of ``a_max``, not the full range."""


def sobel_magnitude(img01: Tensor) -> Tensor:
    """Sobel gradient magnitude of the BT.601 luma of ``img01`` (B, 3, H, W) -> (B, 1, H, W), fp32.

    Kernels normalised by 8 (a unit step gives 0.5 on each side of the edge); edges replicate-padded.
    """
    weights = torch.tensor([0.299, 0.587, 0.114], device=img01.device).view(1, 3, 1, 1)
    luma = (img01.float() * weights).sum(1, keepdim=True)  # (B, 1, H, W)
    kx = torch.tensor(_SOBEL_X, device=img01.device) / 8
    kernels = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3)
    grads = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)  # (B, 2, H, W)
    return grads.pow(2).sum(1, keepdim=True).sqrt()


def gradient_keep_map(lr_up01: Tensor, size: tuple[int, int], a_min: float, a_max: float) -> Tensor:
    """Region-adaptive keep ratio (CODSR's RGPA): ``a = a_max - (a_max - a_min) g / max(g)`` per image.

    ``g`` is the Sobel magnitude of the upsampled LR (B, 3, H, W) area-pooled to the latent grid
    ``size`` = (h, w); the map is monotone decreasing in ``g`` (textured regions keep less of the
    LQ latent, i.e. get more noise) and lies in [a_min, a_max]; a flat image gets ``a_max``
    everywhere (``max(g)`` is floored at 1e-3). Returns (B, 1, h, w) fp32.
    """
    g = sobel_magnitude(lr_up01)
    if tuple(g.shape[-2:]) != tuple(size):
        g = F.interpolate(g, size=size, mode="area")
    g = torch.where(g > _FLAT, g, torch.zeros_like(g))  # fp rounding of a flat image is flat
    peak = g.flatten(1).amax(1).view(-1, 1, 1, 1).clamp_min(_PEAK_FLOOR)
    return a_max - (a_max - a_min) * (g / peak)


def condition_keep_map(lr_up01: Tensor | None, size: tuple[int, int], cfg: FlowConfig) -> Tensor | None:
    """The spatial keep map of ``cfg.cond_noise_map`` (None for ``none``, the per-sample scalar)."""
    if cfg.cond_noise_map == "none":
        return None
    if cfg.cond_noise_map != "gradient":
        raise ValueError(f"unknown flow.cond_noise_map={cfg.cond_noise_map!r}; use none or gradient")
    if lr_up01 is None:
        raise ValueError("flow.cond_noise_map=gradient needs the upsampled LR image")
    return gradient_keep_map(lr_up01, size, cfg.cond_noise_a_min, cfg.cond_noise_a_max)


def inference_keep_map(keep_map: Tensor, strength: float) -> Tensor:
    """Inference fidelity/realism knob: ``a = 1 - strength (1 - map)``; 0 = the clean LQ latent, 1 = the
    training map."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"--cond-noise strength {strength} must be in [0, 1]")
    return 1 - strength * (1 - keep_map)


def noise_condition(lq: Tensor, cfg: FlowConfig, generator: torch.Generator | None) -> Tensor:
    """Spherical condition noise with freshly drawn ``a = sigmoid(N(mean, std))`` and ``n``; lq (B, C, H, W)."""
    draws = draw_conditions(lq, cfg, generator)
    return spherical_noise(lq, draws.keep, draws.noise)


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


def apply_conditions(lq: Tensor, sem: Tensor | None, draws: ConditionDraws, *,
                     keep_map: Tensor | None = None) -> Conditions:
    """Partial conditioning from given draws: spherical-noised ``lq`` with ``sem``, or ``w lq`` and zeros;
    samples flagged in ``draws.sem_drop`` keep the noised ``lq`` with zero tokens.

    ``keep_map`` (B, 1, H, W), when given, replaces the drawn per-sample ``a`` (``flow.cond_noise_map``).
    """
    keep = draws.keep if keep_map is None else keep_map
    mixed = mix_conditions(spherical_noise(lq, keep, draws.noise), weak_anchor(lq, draws.w), sem, draws.weak)
    if draws.sem_drop is not None and mixed.sem is not None:
        mixed.sem = torch.where(per_sample(draws.sem_drop, mixed.sem).bool(), torch.zeros_like(mixed.sem), mixed.sem)
    return mixed


def partial_condition(lq: Tensor, sem: Tensor | None, cfg: FlowConfig,
                      generator: torch.Generator | None) -> Conditions:
    """Partial conditioning (METHOD.md §4): spherical-noised ``lq`` with full ``sem``, except a
    ``cfg.cfg_ratio`` fraction of samples that get ``w lq`` (``w ~ U[weak_min, weak_max]``, no
    noise) and zero semantic tokens. lq: (B, C, H, W); sem: (B, N, D) or None.
    """
    return apply_conditions(lq, sem, draw_conditions(lq, cfg, generator))


# ----------------------------------------------------------------------------- loss
@dataclass
class FlowDraws:
    """Every random draw of one teacher loss call."""

    t: Tensor
    """(B,) training times."""
    eps: Tensor
    """(B, C, H, W) the noise end of the path."""
    conditions: ConditionDraws


def draw_flow(z_hq: Tensor, cfg: FlowConfig, generator: torch.Generator | None) -> FlowDraws:
    """Draw t, eps and the conditioning draws for a teacher loss on ``z_hq`` (B, C, H, W)."""
    t = sample_time(z_hq.shape[0], cfg, generator, z_hq.device)  # (B,)
    eps = randn(tuple(z_hq.shape), generator, z_hq.device).to(z_hq.dtype)
    return FlowDraws(t=t, eps=eps, conditions=draw_conditions(z_hq, cfg, generator))


def flow_loss(model: Model, z_hq: Tensor, z_lq: Tensor, sem: Tensor | None, cfg: FlowConfig,
              generator: torch.Generator | None, draws: FlowDraws | None = None, *,
              keep_map: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Teacher flow-matching loss: MSE between ``model([c, x_t], t, s)`` and ``v = eps - z_hq``.

    z_hq, z_lq: (B, C, H, W) latents on one grid; sem: (B, N, D) or None. ``draws`` (else drawn
    with ``generator``) fixes every random choice; ``keep_map`` (B, 1, H, W) is the spatial keep ratio
    of ``flow.cond_noise_map`` (None: the drawn per-sample ``a``). Returns the scalar loss (fp32, with
    graph) and stats ``loss/flow`` and ``flow/weak_fraction``.
    """
    if z_hq.shape != z_lq.shape:
        raise ValueError(f"flow_loss: HQ latent {tuple(z_hq.shape)} and LQ latent {tuple(z_lq.shape)} differ; "
                         "check data.scale and the LQ upsampling")
    draws = draws if draws is not None else draw_flow(z_hq, cfg, generator)
    x_t = interpolate(z_hq, draws.eps, draws.t)
    target = draws.eps - z_hq  # (B, C, H, W)
    conds = apply_conditions(z_lq, sem, draws.conditions, keep_map=keep_map)
    v_pred = model(torch.cat([conds.cond, x_t], dim=1), draws.t, conds.sem, None)  # (B, C, H, W)
    loss = (v_pred.float() - target.float()).pow(2).mean()
    if draws.conditions.sem_drop is None:
        values = torch.stack([loss.detach(), conds.weak.float().mean()]).tolist()  # one device sync
        return loss, {"loss/flow": values[0], "flow/weak_fraction": values[1]}
    values = torch.stack([loss.detach(), conds.weak.float().mean(), draws.conditions.sem_drop.float().mean()]).tolist()
    return loss, {"loss/flow": values[0], "flow/weak_fraction": values[1], "flow/sem_drop_fraction": values[2]}


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


def combine_branches(v_weak: Tensor, v_lr: Tensor, v_full: Tensor, guidance_lr: float | Tensor,
                     guidance_sem: float | Tensor) -> Tensor:
    """Per-branch guidance ``v_weak + s_lr (v_lr - v_weak) + s_sem (v_full - v_lr)``.

    ``v_weak``: weak anchor, zero tokens; ``v_lr``: clean LQ, zero tokens; ``v_full``: clean LQ and tokens;
    all (B, C, H, W). ``s_lr`` scales the pull towards the LQ image, ``s_sem`` the semantic detail on top;
    ``s_lr == s_sem == s`` is ``v_weak + s (v_full - v_weak)``, the single-knob guidance.
    """
    return v_weak + guidance_lr * (v_lr - v_weak) + guidance_sem * (v_full - v_lr)


def three_branch_velocity(model: Model, x_t: Tensor, t: Tensor, z_lq: Tensor, sem: Tensor | None, *,
                          guidance_lr: float, guidance_sem: float, weak_anchor: float) -> Tensor:
    """``combine_branches`` of the weak, LQ-only and full branches at ``(x_t, t)`` in one forward of 3B.

    x_t, z_lq: (B, C, H, W); t: (B,); sem: (B, N, D) or None (then the LQ-only and full branches are one).
    """
    weak_cond = z_lq * weak_anchor
    zeros = zero_semantic(sem)
    x_in = torch.cat([torch.cat([weak_cond, x_t], dim=1), torch.cat([z_lq, x_t], dim=1),
                      torch.cat([z_lq, x_t], dim=1)])  # (3B, 2C, H, W)
    sem_in = None if sem is None else torch.cat([zeros, zeros, sem])  # (3B, N, D)
    v_weak, v_lr, v_full = model(x_in, torch.cat([t, t, t]), sem_in, None).chunk(3)
    return combine_branches(v_weak, v_lr, v_full, guidance_lr, guidance_sem)


@torch.no_grad()
def branch_guided_velocity(model: Model, x_t: Tensor, t: Tensor, z_lq: Tensor, sem: Tensor | None, *,
                           guidance: float, weak_anchor: float, guidance_sem: float | None = None) -> Tensor:
    """Teacher velocity with per-branch guidance (``guidance`` is ``s_lr``; ``guidance_sem`` None = same).

    Equal scales (or no semantic tokens) take ``guided_velocity``, bit for bit today's sampler; otherwise
    ``three_branch_velocity`` in one forward of 3B.
    """
    if guidance_sem is None or guidance_sem == guidance or sem is None:
        return guided_velocity(model, x_t, t, z_lq, sem, guidance=guidance, weak_anchor=weak_anchor)
    return three_branch_velocity(model, x_t, t, z_lq, sem, guidance_lr=guidance, guidance_sem=guidance_sem,
                                 weak_anchor=weak_anchor)


@torch.no_grad()
def sample_euler(model: Model, z_lq: Tensor, sem: Tensor | None, noise: Tensor, *, steps: int,
                 guidance: float, weak_anchor: float, progress: bool = False,
                 guidance_sem: float | None = None) -> Tensor:
    """Euler ODE solve from ``noise`` at t = 1 to a clean latent at t = 0 in ``steps`` uniform steps.

    ``guidance`` is the single knob ``s`` or, with ``guidance_sem`` given, the LQ branch's ``s_lr``
    (``branch_guided_velocity``). z_lq, noise: (B, C, H, W); returns (B, C, H, W) in ``noise``'s dtype.
    """
    x = noise
    for t_k, t_next in _uniform_steps(steps, "sample_euler", progress):
        t = torch.full((x.shape[0],), t_k, device=x.device, dtype=torch.float32)
        v = branch_guided_velocity(model, x, t, z_lq, sem, guidance=guidance, weak_anchor=weak_anchor,
                                   guidance_sem=guidance_sem)
        x = x - (t_k - t_next) * v.to(x.dtype)
    return x


def _uniform_steps(steps: int, who: str, progress: bool = False) -> Iterator[tuple[float, float]]:
    """``(t_k, t_{k+1})`` with ``t_k = 1 - k / steps``, k = 0..steps-1 (a tqdm bar when ``progress``)."""
    if steps < 1:
        raise ValueError(f"{who}: steps={steps} must be >= 1; change flow.sample_steps or --steps")
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    pairs = list(zip(times[:-1], times[1:]))
    if not progress:
        return iter(pairs)
    from tqdm.auto import tqdm

    return iter(tqdm(pairs, desc=who, leave=False))


def omega_tensor(omega: Tensor | float | None, batch: int, device: torch.device | str) -> Tensor | None:
    """A guidance value for a ``with_omega`` student as a (B,) float32 tensor; None stays None."""
    if omega is None:
        return None
    if isinstance(omega, Tensor):
        return omega.to(device=device, dtype=torch.float32).expand(batch) if omega.dim() == 0 else \
            omega.to(device=device, dtype=torch.float32)
    return torch.full((batch,), float(omega), device=device, dtype=torch.float32)


def _with_omega(omega: Tensor | None) -> dict[str, Tensor]:
    """``{"omega": omega}`` for a guidance-conditioned student, nothing for any other model."""
    return {} if omega is None else {"omega": omega}


def one_step(model: Model, z_lq: Tensor, sem: Tensor | None, noise: Tensor,
             omega: Tensor | float | None = None) -> Tensor:
    """One-step student sample ``x0 = eps - u([lq, eps], t = 1, r = 0)`` (METHOD.md §5); no guidance,
    except through ``omega`` for a student distilled over ``distill.guidance_range``.

    Differentiable (the distillation's LPIPS term trains through it); ``sample_one_step`` is the
    no-grad version inference uses.
    """
    batch = noise.shape[0]
    t = torch.ones(batch, device=noise.device)
    r = torch.zeros(batch, device=noise.device)
    kw = _with_omega(omega_tensor(omega, batch, noise.device))
    return noise - model(torch.cat([z_lq, noise], dim=1), t, sem, r, **kw).to(noise.dtype)


sample_one_step = torch.no_grad()(one_step)


@torch.no_grad()
def sample_student(model: Model, z_lq: Tensor, sem: Tensor | None, noise: Tensor, *, steps: int = 1,
                   progress: bool = False, omega: Tensor | float | None = None) -> Tensor:
    """Few-step student sample (METHOD.md §5): from ``noise`` at t = 1, chain the average velocity
    ``x <- x - (t_k - t_{k+1}) u(x, t_k, t_{k+1})`` over ``steps`` uniform steps; no guidance, except
    ``omega`` for a guidance-conditioned student.

    ``steps = 1`` is ``sample_one_step``. z_lq, noise: (B, C, H, W); returns (B, C, H, W).
    """
    x = noise
    kw = _with_omega(omega_tensor(omega, noise.shape[0], noise.device))
    for t_k, t_next in _uniform_steps(steps, "sample_student", progress):
        t = torch.full((x.shape[0],), t_k, device=x.device, dtype=torch.float32)
        r = torch.full((x.shape[0],), t_next, device=x.device, dtype=torch.float32)
        x = x - (t_k - t_next) * model(torch.cat([z_lq, x], dim=1), t, sem, r, **kw).to(x.dtype)
    return x
