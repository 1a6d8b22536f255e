"""Image-quality metrics: PSNR/SSIM on the Y channel, LPIPS, and pyiqa metrics when present locally.

PSNR and SSIM follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``: BT.601 luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (RGB in [0, 1],
Y on the 0-255 scale, not rounded), ``crop_border`` pixels removed on each side, SSIM with an
11x11 Gaussian window (sigma 1.5) over the valid region. LPIPS is AlexNet-LPIPS from the
``lpips`` package. Learned metrics never download: a metric whose weights files are not already
on disk is reported as unavailable with the reason, never built with random weights.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

PAIRED = ("psnr", "ssim", "lpips", "dists")
NO_REFERENCE = ("niqe", "musiq", "maniqa", "clipiqa")
ALL_METRICS = PAIRED + NO_REFERENCE
LOWER_IS_BETTER = frozenset({"lpips", "dists", "niqe"})
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
# Files each pyiqa metric loads at construction (pyiqa/archs/*_arch.py default URLs): paths relative
# to torch.hub's dir, ``~``-paths, or ``hf:`` folders of the Hugging Face hub cache; each entry lists
# alternative locations, any one of which suffices.
PYIQA_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "dists": (("pyiqa/DISTS_weights-f5e65c96.pth",), ("checkpoints/vgg16-397923af.pth",)),
    "niqe": (("pyiqa/niqe_modelparameters.mat",),),
    "musiq": (("pyiqa/musiq_koniq_ckpt-e95806b9.pth",),),
    "maniqa": (("pyiqa/ckpt_koniq10k.pt",),
               ("hf:models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k",)),
    "clipiqa": (("pyiqa/RN50.pt", "~/.cache/clip/RN50.pt"),),
}


# ---------------------------------------------------------------------------------------
# PSNR / SSIM (BasicSR protocol)
# ---------------------------------------------------------------------------------------


def rgb_to_y(img01: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma on the 0-255 scale (float64)."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=img01.device)
    return (img01.double() * weights.view(1, 3, 1, 1)).sum(1, keepdim=True) + 16.0


def _crop(x: Tensor, border: int) -> Tensor:
    if border <= 0:
        return x
    if x.shape[-1] <= 2 * border or x.shape[-2] <= 2 * border:
        raise ValueError(f"image {tuple(x.shape[-2:])} is too small for a {border}-pixel border crop (--scale)")
    return x[..., border:-border, border:-border]


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"metric inputs must be equal (B, 3, H, W) shapes, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")


def psnr_y(pred: Tensor, gt: Tensor, crop_border: int = 0) -> Tensor:
    """PSNR (dB) per image on the Y channel; pred, gt (B, 3, H, W) in [0, 1]; returns (B,) float64."""
    _check_pair(pred, gt)
    diff = _crop(rgb_to_y(pred), crop_border) - _crop(rgb_to_y(gt), crop_border)
    mse = diff.pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse)  # inf for identical images, as BasicSR


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim_y(pred: Tensor, gt: Tensor, crop_border: int = 0) -> Tensor:
    """SSIM per image on the Y channel (BasicSR ``_ssim``: 0-255 data, valid 11x11 Gaussian); (B,) float64."""
    _check_pair(pred, gt)
    x = _crop(rgb_to_y(pred), crop_border)
    y = _crop(rgb_to_y(gt), crop_border)
    window = _gaussian_window(device=x.device)
    if min(x.shape[-2:]) < window.shape[-1]:
        raise ValueError(f"image {tuple(x.shape[-2:])} after border crop is smaller than the SSIM window")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x ** 2
    var_y = F.conv2d(y * y, window) - mu_y ** 2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------
# Learned metrics
# ---------------------------------------------------------------------------------------


def hub_dir() -> Path:
    """torch.hub's cache folder (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``)."""
    return Path(torch.hub.get_dir()).expanduser()


def lpips_weights_path() -> Path:
    """Where torchvision (hence ``lpips``) looks for the AlexNet backbone."""
    return hub_dir() / "checkpoints" / ALEXNET_FILE


def load_lpips(device: torch.device | str) -> torch.nn.Module:
    """The frozen LPIPS (AlexNet) network on ``device``; inputs in [-1, 1]. Check
    ``lpips_unavailable_reason`` first: without local weights torchvision would download them."""
    import lpips

    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" from inside lpips
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", verbose=False).to(device).eval().requires_grad_(False)


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS can be built offline, else why not."""
    if importlib.util.find_spec("lpips") is None:
        return "the lpips package is not installed"
    if not lpips_weights_path().is_file():
        return (f"AlexNet backbone {lpips_weights_path()} is missing; run scripts/install_lpips_weights.py "
                "(LPIPS is never computed with random weights)")
    return None


def _weights_location(spec: str) -> Path:
    if spec.startswith("hf:"):
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE) / spec[3:]
    if spec.startswith("~"):
        return Path(os.path.expanduser(spec))
    return hub_dir() / spec


def pyiqa_unavailable_reason(name: str) -> str | None:
    """None when pyiqa is installed and every weights file of ``name`` is on disk, else why not."""
    if importlib.util.find_spec("pyiqa") is None:
        return "pyiqa is not installed"
    for alternatives in PYIQA_FILES[name]:
        paths = [_weights_location(a) for a in alternatives]
        if not any(p.exists() for p in paths):
            return f"weights file {paths[0]} is missing (pyiqa would download it; downloads are disabled)"
    return None


@dataclass
class MetricSuite:
    """The requested metrics that can run here; ``unavailable`` maps the others to a reason."""

    names: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    crop_border: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    _models: dict[str, Callable[..., Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(ALL_METRICS)} (--metrics)")
        for name in self.names:
            reason = self._build(name)
            if reason is not None:
                self.unavailable[name] = reason
                logger.warning("metric %s unavailable: %s", name, reason)

    @property
    def available(self) -> list[str]:
        """Requested metrics that will be computed, in request order."""
        return [n for n in self.names if n not in self.unavailable]

    def _build(self, name: str) -> str | None:
        if name in ("psnr", "ssim"):
            return None
        if name == "lpips":
            reason = lpips_unavailable_reason()
            if reason is None:
                model = load_lpips(self.device)
                self._models[name] = lambda p, g: model(p * 2 - 1, g * 2 - 1).flatten()
            return reason
        reason = pyiqa_unavailable_reason(name)
        if reason is None:
            import pyiqa

            metric = pyiqa.create_metric(name, device=self.device, as_loss=False)
            self._models[name] = (lambda p, g: metric(p, g).flatten()) if name in PAIRED else \
                (lambda p, g: metric(p).flatten())
        return reason

    @torch.no_grad()
    def compute(self, pred: Tensor, gt: Tensor | None = None) -> dict[str, list[float]]:
        """Per-image values of every available metric; paired ones are skipped when ``gt`` is None.

        pred, gt: (B, 3, H, W) in [0, 1].
        """
        pred = pred.to(self.device).float()
        gt = None if gt is None else gt.to(self.device).float()
        results: dict[str, list[float]] = {}
        for name in self.available:
            if name in PAIRED and gt is None:
                continue
            if name == "psnr":
                values = psnr_y(pred, gt, self.crop_border)
            elif name == "ssim":
                values = ssim_y(pred, gt, self.crop_border)
            else:
                values = self._models[name](pred, gt)
            results[name] = [float(v) for v in values.cpu()]
        return results
