"""Batched blur kernels of the Real-ESRGAN degradation (Wang et al., ICCV-W 2021, §3.1).

Every family is a pure function of per-kernel parameter tensors of shape ``(N,)`` that returns
``(N, K, K)`` kernels summing to 1. Kernels of a smaller odd size ``k`` live zero-padded in the
centre of the ``K x K`` grid (what Real-ESRGAN does when it pads every kernel to 21).
The samplers draw every parameter per image through an optional CPU ``torch.Generator``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from vosr.config.degradation import BlurConfig


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """``(n,)`` float64 uniform draws in ``[low, high]`` on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def choice(n: int, weights: list[float], generator: torch.Generator | None) -> Tensor:
    """``(n,)`` int64 indices drawn with probabilities proportional to ``weights``."""
    probs = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)


def mesh_grid(size: int, device: torch.device | str | None = None) -> Tensor:
    """``(K, K, 2)`` float64 pixel offsets ``(x, y)`` from the centre of an odd ``size`` grid."""
    ax = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _mahalanobis(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, size: int) -> Tensor:
    """``(N, K, K)`` squared distance ``g^T Sigma^-1 g`` with ``Sigma = R diag(sx^2, sy^2) R^T``."""
    grid = mesh_grid(size, sigma_x.device)  # (K, K, 2)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    # Rotate the grid into the kernel's principal axes: u = R^T g.
    u = grid[..., 0] * cos + grid[..., 1] * sin  # (N, K, K)
    v = -grid[..., 0] * sin + grid[..., 1] * cos
    return (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2


def _normalise(kernels: Tensor) -> Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernels(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, size: int) -> Tensor:
    """Anisotropic Gaussian ``exp(-d/2)``; isotropic when ``sigma_x == sigma_y``. ``(N,)`` -> ``(N, K, K)``."""
    return _normalise(torch.exp(-0.5 * _mahalanobis(sigma_x, sigma_y, theta, size)))


def isotropic_gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """Isotropic Gaussian kernels, ``(N,)`` sigmas in pixels -> ``(N, K, K)``."""
    return gaussian_kernels(sigma, sigma, torch.zeros_like(sigma), size)


def generalized_gaussian_kernels(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor,
                                 size: int) -> Tensor:
    """Generalized Gaussian ``exp(-d^beta / 2)`` (d: squared Mahalanobis distance). -> ``(N, K, K)``."""
    d = _mahalanobis(sigma_x, sigma_y, theta, size)
    return _normalise(torch.exp(-0.5 * d ** beta[:, None, None]))


def plateau_kernels(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor, size: int) -> Tensor:
    """Plateau-shaped ``1 / (1 + d^beta)`` (d: squared Mahalanobis distance). -> ``(N, K, K)``."""
    d = _mahalanobis(sigma_x, sigma_y, theta, size)
    return _normalise(1.0 / (1.0 + d ** beta[:, None, None]))


def circular_lowpass_kernels(cutoff: Tensor, size: int) -> Tensor:
    """2-D sinc (ideal circular low-pass, ``omega_c`` in radians): ``wc J1(wc r) / (2 pi r)``. -> ``(N, K, K)``."""
    grid = mesh_grid(size, cutoff.device)
    r = grid.norm(dim=-1)  # (K, K)
    wc = cutoff[:, None, None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernels = wc * torch.special.bessel_j1(wc * safe_r) / (2 * math.pi * safe_r)
    # The limit of J1(x) / x at 0 is 1/2, so the centre is wc^2 / (4 pi).
    kernels = torch.where(r > 0, kernels, wc ** 2 / (4 * math.pi))
    return _normalise(kernels)


def pulse_kernels(n: int, size: int) -> Tensor:
    """``(N, K, K)`` identity kernels (a single 1 in the centre)."""
    kernels = torch.zeros(n, size, size, dtype=torch.float64)
    kernels[:, size // 2, size // 2] = 1.0
    return kernels


def crop_to_sizes(kernels: Tensor, sizes: Tensor) -> Tensor:
    """Zero each ``(K, K)`` kernel outside its centred ``sizes[i] x sizes[i]`` window and renormalise."""
    size = kernels.shape[-1]
    offset = mesh_grid(size, kernels.device).abs().amax(dim=-1)  # (K, K) Chebyshev radius
    inside = offset[None] <= (sizes.to(kernels.device)[:, None, None] - 1) / 2
    return _normalise(kernels * inside)


def _sample_beta_gaussian(n: int, beta: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    # Half of the draws are below 1 (heavy tails) and half above (flat tops), as in BasicSR's
    # random_bivariate_generalized_Gaussian, so both shapes are equally common.
    low = uniform(n, beta[0], min(1.0, beta[1]), generator)
    high = uniform(n, max(1.0, beta[0]), beta[1], generator)
    return torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < 0.5, low, high)


def sample_gaussian_family(cfg: BlurConfig, n: int, size: int, generator: torch.Generator | None) -> Tensor:
    """Draw ``n`` kernels of the six Gaussian families with ``cfg.kind_probs`` -> ``(N, K, K)``."""
    kind = choice(n, cfg.kind_probs, generator)
    sigma_x = uniform(n, *cfg.sigma, generator)
    sigma_y = uniform(n, *cfg.sigma, generator)
    theta = uniform(n, -math.pi, math.pi, generator)
    beta_g = _sample_beta_gaussian(n, cfg.beta_gaussian, generator)
    beta_p = uniform(n, *cfg.beta_plateau, generator)
    iso = kind % 2 == 0  # BLUR_KINDS alternates iso / aniso
    sigma_y = torch.where(iso, sigma_x, sigma_y)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    family = torch.stack([gaussian_kernels(sigma_x, sigma_y, theta, size),
                          generalized_gaussian_kernels(sigma_x, sigma_y, theta, beta_g, size),
                          plateau_kernels(sigma_x, sigma_y, theta, beta_p, size)])  # (3, N, K, K)
    family_index = kind // 2  # BLUR_KINDS pairs: gaussian, generalized, plateau
    return family[family_index, torch.arange(n)]


def sample_sinc_cutoffs(cfg: BlurConfig, sizes: Tensor, generator: torch.Generator | None) -> Tensor:
    """``(N,)`` sinc cutoffs: ``cfg.sinc_cutoff_small`` below ``cfg.sinc_small_size``, else ``cfg.sinc_cutoff``."""
    small = uniform(len(sizes), *cfg.sinc_cutoff_small, generator)
    large = uniform(len(sizes), *cfg.sinc_cutoff, generator)
    return torch.where(sizes < cfg.sinc_small_size, small, large)


def sample_blur_kernels(cfg: BlurConfig, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-image blur kernels of one stage, ``(N, K, K)`` float32 on the CPU, K = max(kernel_sizes).

    Each image draws its own size, family (sinc with ``cfg.sinc_prob``, else one of the six
    Gaussian kinds) and shape; images not blurred (``cfg.enabled``, ``cfg.prob``) get a pulse.
    """
    size = max(cfg.kernel_sizes)
    sizes = torch.tensor(cfg.kernel_sizes)[choice(n, [1.0] * len(cfg.kernel_sizes), generator)]
    gaussian = sample_gaussian_family(cfg, n, size, generator)
    sinc = circular_lowpass_kernels(sample_sinc_cutoffs(cfg, sizes, generator), size)
    use_sinc = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.sinc_prob
    blurred = torch.rand(n, generator=generator, dtype=torch.float64) < (cfg.prob if cfg.enabled else 0.0)
    kernels = crop_to_sizes(torch.where(use_sinc[:, None, None], sinc, gaussian), sizes)
    return torch.where(blurred[:, None, None], kernels, pulse_kernels(n, size)).float()


def sample_final_sinc_kernels(n: int, kernel_sizes: list[int], cutoff: tuple[float, float], prob: float,
                              generator: torch.Generator | None = None) -> Tensor:
    """Per-image final sinc kernels (a pulse with probability ``1 - prob``), ``(N, K, K)`` float32."""
    size = max(kernel_sizes)
    sizes = torch.tensor(kernel_sizes)[choice(n, [1.0] * len(kernel_sizes), generator)]
    sinc = crop_to_sizes(circular_lowpass_kernels(uniform(n, *cutoff, generator), size), sizes)
    use = torch.rand(n, generator=generator, dtype=torch.float64) < prob
    return torch.where(use[:, None, None], sinc, pulse_kernels(n, size)).float()
