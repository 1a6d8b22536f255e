"""Typed parameters of the second-order Real-ESRGAN degradation (METHOD.md §1).

No field has a default: every number comes from a YAML file under ``configs/degradation/``.
Ranges are ``[low, high]`` pairs; probability lists are normalised where noted.
"""
from __future__ import annotations

from dataclasses import dataclass

from vosr.config.core import check as _check

BLUR_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _check_range(name: str, rng: tuple[float, float], low: float = 0.0) -> None:
    _check(low <= rng[0] <= rng[1], f"{name} must be [low, high] with {low} <= low <= high, got {list(rng)}")


def _check_probs(name: str, probs: list[float], n: int) -> None:
    _check(len(probs) == n and all(p >= 0 for p in probs) and sum(probs) > 0,
           f"{name} must be {n} non-negative weights, got {probs}")


@dataclass(kw_only=True)
class BlurConfig:
    enabled: bool
    """Apply this blur stage at all."""
    prob: float
    """Probability that an image is blurred in this stage."""
    kernel_sizes: list[int]
    """Odd kernel sizes drawn uniformly per image (padded to the largest)."""
    kind_probs: list[float]
    """Weights of iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso."""
    sigma: tuple[float, float]
    """Gaussian sigma range in pixels."""
    beta_gaussian: tuple[float, float]
    """Shape beta range of generalized Gaussian kernels."""
    beta_plateau: tuple[float, float]
    """Shape beta range of plateau kernels."""
    sinc_prob: float
    """Probability of a sinc (ringing) kernel instead of a Gaussian one."""
    sinc_cutoff: tuple[float, float]
    """Sinc cutoff frequency range in radians (pi = Nyquist) for kernel sizes >= sinc_small_size."""
    sinc_cutoff_small: tuple[float, float]
    """Sinc cutoff range in radians for kernel sizes < sinc_small_size (a small kernel cannot hold a low cutoff)."""
    sinc_small_size: int
    """Kernel size below which sinc_cutoff_small is used (13 in Real-ESRGAN)."""

    def __post_init__(self) -> None:
        _check(all(k % 2 == 1 and k >= 3 for k in self.kernel_sizes) and self.kernel_sizes,
               f"blur kernel_sizes must be odd and >= 3, got {self.kernel_sizes}")
        _check_probs("blur kind_probs", self.kind_probs, len(BLUR_KINDS))
        _check_range("blur sigma", self.sigma, 1e-3)
        _check_range("blur beta_gaussian", self.beta_gaussian, 1e-3)
        _check_range("blur beta_plateau", self.beta_plateau, 1e-3)
        _check(0 <= self.prob <= 1 and 0 <= self.sinc_prob <= 1, "blur prob and sinc_prob must lie in [0, 1]")
        _check_range("blur sinc_cutoff", self.sinc_cutoff, 1e-3)
        _check_range("blur sinc_cutoff_small", self.sinc_cutoff_small, 1e-3)


@dataclass(kw_only=True)
class ResizeConfig:
    enabled: bool
    """Apply this random resize at all."""
    updown_probs: list[float]
    """Weights of up, down, keep."""
    scale_range: tuple[float, float]
    """Resize factor range (up draws from [1, high], down from [low, 1])."""
    mode_probs: list[float]
    """Weights of area, bilinear, bicubic interpolation."""

    def __post_init__(self) -> None:
        _check_probs("resize updown_probs", self.updown_probs, 3)
        _check_probs("resize mode_probs", self.mode_probs, len(RESIZE_MODES))
        _check_range("resize scale_range", self.scale_range, 1e-3)


@dataclass(kw_only=True)
class NoiseConfig:
    enabled: bool
    """Apply noise at all."""
    gaussian_prob: float
    """Probability of Gaussian noise (else Poisson)."""
    sigma: tuple[float, float]
    """Gaussian sigma range on the 0-255 scale."""
    poisson_scale: tuple[float, float]
    """Poisson noise scale range."""
    gray_prob: float
    """Probability that the noise is the same on all channels."""

    def __post_init__(self) -> None:
        _check_range("noise sigma", self.sigma)
        _check_range("noise poisson_scale", self.poisson_scale)
        _check(0 <= self.gaussian_prob <= 1 and 0 <= self.gray_prob <= 1, "noise probabilities must lie in [0, 1]")


@dataclass(kw_only=True)
class JpegConfig:
    enabled: bool
    """Apply JPEG compression at all."""
    quality: tuple[float, float]
    """JPEG quality range (1-100)."""

    def __post_init__(self) -> None:
        _check(1 <= self.quality[0] <= self.quality[1] <= 100,
               f"jpeg quality must lie in [1, 100], got {list(self.quality)}")


@dataclass(kw_only=True)
class DegradationConfig:
    scale: int
    """Super-resolution factor; the LR image is HR / scale."""
    blur1: BlurConfig
    resize1: ResizeConfig
    noise1: NoiseConfig
    jpeg1: JpegConfig
    second_order_prob: float
    """Probability that an image goes through the second pass at all (1 in the paper)."""
    blur2: BlurConfig
    resize2: ResizeConfig
    noise2: NoiseConfig
    jpeg2: JpegConfig
    final_sinc_prob: float
    """Probability of the final sinc filter applied with the resize to HR / scale."""
    final_sinc_kernel_sizes: list[int]
    """Odd kernel sizes of that final sinc filter."""
    final_sinc_cutoff: tuple[float, float]
    """Cutoff frequency range in radians (pi = Nyquist) of that final sinc filter."""
    antialias: bool
    """Antialias bilinear/bicubic downscaling (Real-ESRGAN: false; true makes an all-off config plain bicubic)."""
    final_resize_mode_probs: list[float]
    """Weights of area, bilinear, bicubic for the resize to HR / scale."""
    upsample_mode_probs: list[float]
    """Weights of area, bilinear, bicubic for the resize of LR back to HR size (training)."""
    bicubic_prob: float = 0.0
    """Share of images whose LR is the plain antialiased bicubic downscale instead (no blur, noise or JPEG):
    a model then also learns clean inputs, as the bicubic evaluation protocol has; 0 = the paper's pipeline
    (and no extra draw, so the other draws are unchanged)."""

    def __post_init__(self) -> None:
        _check(self.scale >= 1, f"degradation.scale must be >= 1, got {self.scale}")
        _check(0 <= self.bicubic_prob <= 1, f"degradation.bicubic_prob must lie in [0, 1], got {self.bicubic_prob}")
        _check(0 <= self.second_order_prob <= 1 and 0 <= self.final_sinc_prob <= 1,
               "degradation second_order_prob and final_sinc_prob must lie in [0, 1]")
        _check_probs("degradation.final_resize_mode_probs", self.final_resize_mode_probs, 3)
        _check_probs("degradation.upsample_mode_probs", self.upsample_mode_probs, 3)
        _check(all(k % 2 == 1 and k >= 3 for k in self.final_sinc_kernel_sizes) and self.final_sinc_kernel_sizes,
               f"degradation.final_sinc_kernel_sizes must be odd and >= 3, got {self.final_sinc_kernel_sizes}")
        _check_range("degradation.final_sinc_cutoff", self.final_sinc_cutoff, 1e-3)
