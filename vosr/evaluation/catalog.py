"""The metrics ``vosr.evaluate`` knows and how papers print them; no heavy imports (``--help`` reads this).

Order, arrows and decimals follow the tables of one-step SR papers (OSEDiff, PiSA-SR, VOSR):
PSNR↑ SSIM↑ LPIPS↓ DISTS↓ NIQE↓ MUSIQ↑ MANIQA↑ CLIP-IQA↑, PSNR/NIQE/MUSIQ with 2 decimals, the
others with 4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """How one metric is printed."""

    label: str
    """Column title as papers print it."""
    decimals: int
    """Digits after the point."""
    lower_is_better: bool
    """Direction of the arrow."""
    paired: bool
    """Needs the ground-truth image."""

    @property
    def header(self) -> str:
        """Label with its arrow, e.g. ``LPIPS↓``."""
        return f"{self.label}{'↓' if self.lower_is_better else '↑'}"

    def format(self, value: float | None) -> str:
        """``value`` with the paper's decimals; ``-`` when missing, ``inf`` kept as is."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{self.decimals}f}"


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR", 2, False, True),
    "ssim": MetricInfo("SSIM", 4, False, True),
    "lpips": MetricInfo("LPIPS", 4, True, True),
    "dists": MetricInfo("DISTS", 4, True, True),
    "niqe": MetricInfo("NIQE", 2, True, False),
    "musiq": MetricInfo("MUSIQ", 2, False, False),
    "maniqa": MetricInfo("MANIQA", 4, False, False),
    "clipiqa": MetricInfo("CLIP-IQA", 4, False, False),
}
ALL_METRICS = tuple(METRICS)
PAIRED = tuple(n for n, m in METRICS.items() if m.paired)
NO_REFERENCE = tuple(n for n, m in METRICS.items() if not m.paired)
LOWER_IS_BETTER = frozenset(n for n, m in METRICS.items() if m.lower_is_better)
PROTOCOLS = ("realesrgan", "bicubic")
"""Degradation protocols of ``make-set``."""
