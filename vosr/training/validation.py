"""Periodic validation on a fixed degraded set: PSNR/SSIM (Y), LPIPS when its weights exist, and a grid."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vosr.config import RunConfig
from vosr.data.stream import build_val_batches
from vosr.evaluation import metrics
from vosr.images import make_grid

logger = logging.getLogger(__name__)


class Validator:
    """Holds a fixed validation set (HR, its degraded LR, latents, noise) and scores samplers on it."""

    hr: torch.Tensor
    lr_up: torch.Tensor
    z_lq: torch.Tensor
    sem: torch.Tensor | None
    noise: torch.Tensor
    out_dir: Path

    def __init__(self, cfg: RunConfig, parts, device: torch.device, run_dir: Path) -> None:
        batches = build_val_batches(cfg.data)
        if not batches:
            raise ValueError(f"data.val={cfg.data.val} gave no validation images; fix data.val or set log.val_every=0")
        hr = torch.cat([b["hr"] for b in batches])[: cfg.data.val_size].to(device)
        # Fixed across the run and restarts; on the CPU, as the degradation requires (noise moved after).
        gen = torch.Generator().manual_seed(cfg.seed + 12345)
        _, self.z_lq, self.sem, self.lr_up = parts.encode_pair(hr, gen, train=False)
        self.hr, self.parts = hr, parts
        self.noise = torch.randn(self.z_lq.shape, generator=gen).to(device)
        self.out_dir = run_dir / "val"
        # LPIPS and DISTS join when their weights are on disk; otherwise MetricSuite logs why they are absent.
        self._metrics = metrics.MetricSuite(["psnr", "ssim", "lpips", "dists"], device=device,
                                            crop_border=cfg.data.scale)
        self._baseline = self._score("lr_bicubic", self.lr_up)  # fixed inputs: scored once per run
        logger.info("validation set: %d images of %dx%d", hr.shape[0], hr.shape[-2], hr.shape[-1])

    @torch.no_grad()
    def run(self, model: nn.Module, objective, step: int) -> tuple[dict[str, float], Path, np.ndarray]:
        """Sample with the objective's samplers; returns scalars, the grid's path and the grid."""
        samplers = {objective.name: objective.sample, **objective.extra_samplers}
        outputs, scalars = {}, {}
        for name, sample in samplers.items():
            z0 = sample(model, self.z_lq, self.sem, self.noise).float()
            out = self.parts.autoencoder.decode(z0).float().clamp(0, 1)
            out = (out * 255).round() / 255
            outputs[name] = out
            scalars.update(self._score(name, out))
        scalars.update(self._baseline)
        rows = [[self.lr_up[i], *[o[i] for o in outputs.values()], self.hr[i]] for i in range(self.hr.shape[0])]
        grid = make_grid(rows)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{step:08d}.png"
        Image.fromarray(grid).save(path)
        return scalars, path, grid

    def _score(self, name: str, out: torch.Tensor) -> dict[str, float]:
        labels = {"psnr": "psnr_y(dB)", "ssim": "ssim_y", "lpips": "lpips", "dists": "dists"}
        values = self._metrics.compute(out, self.hr)
        return {f"val/{name}/{labels[k]}": float(np.mean(v)) for k, v in values.items()}
