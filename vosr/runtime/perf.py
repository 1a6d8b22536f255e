"""Throughput, MFU and memory figures for the training loop and benchmarks."""
from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    """The accelerator's dense bf16 peak, or None where unknown (e.g. the CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak allocated/reserved GiB since the last reset (CUDA only)."""
    if device.type != "cuda":
        return {}
    gib = 1024**3
    return {"memory/max_allocated(GiB)": torch.cuda.max_memory_allocated(device) / gib,
            "memory/max_reserved(GiB)": torch.cuda.max_memory_reserved(device) / gib}


class StepTimer:
    """Accumulates data-wait and total time between ``report`` calls."""

    data_s: float
    total_s: float
    images: int
    _mark: float

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.data_s, self.total_s, self.images = 0.0, 0.0, 0
        self._mark = time.perf_counter()

    def add_data(self, seconds: float) -> None:
        self.data_s += seconds

    def report(self, images: int, flops_per_image: float | None, peak: float | None) -> dict[str, float]:
        """Figures since the last report; ``images`` counts the whole job's images in that span."""
        now = time.perf_counter()
        self.total_s = max(now - self._mark, 1e-9)
        out = {"perf/images_per_s": images / self.total_s, "time/data(%)": 100.0 * self.data_s / self.total_s}
        if flops_per_image and peak:
            out["perf/mfu(%)"] = 100.0 * images * flops_per_image / self.total_s / peak
        self.data_s, self._mark = 0.0, now
        return out
