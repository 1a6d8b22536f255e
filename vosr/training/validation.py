"""Periodic validation on a fixed degraded set: PSNR/SSIM (Y), LPIPS when its weights exist, and a grid.

The set is the first ``data.val_size`` centre crops of ``data.val`` that have content (flat crops,
blank or sky, are skipped). The grid shows, per crop, LR (nearest) | bicubic | each sampler | HR
under column labels, small crops enlarged with nearest neighbour to a readable size.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vosr.config import DataConfig, RunConfig
from vosr.data.stream import build_val_stream, to_unit
from vosr.evaluation import metrics
from vosr.images import FLAT_DETAIL, detail_level, make_grid, pick_with_content
from vosr.training.conditioning import Extras, bind

logger = logging.getLogger(__name__)

VAL_CANDIDATES = 8
"""Look at up to this many times ``data.val_size`` crops to find ones with content."""
GRID_PANEL = 192
"""Smallest panel side of the grid in pixels (crops are enlarged by an integer factor up to it)."""


def pick_val_images(data: DataConfig) -> torch.Tensor:
    """(N, 3, S, S) the first ``data.val_size`` validation crops with content, flat ones skipped
    (flat ones fill in only when too few have content); N = 0 when ``data.val`` has none."""
    stream = build_val_stream(dataclasses.replace(data, num_workers=0), rank=0, world_size=1)
    seen: list[torch.Tensor] = []
    with_content = 0
    for batch in stream:
        seen.append(to_unit(batch["hr"]))  # the stream yields uint8
        with_content += int((detail_level(seen[-1], data.scale) >= FLAT_DETAIL).sum())
        if with_content >= data.val_size or sum(len(b) for b in seen) >= VAL_CANDIDATES * data.val_size:
            break
    if not seen:
        return torch.empty(0)
    hr = torch.cat(seen)[: VAL_CANDIDATES * data.val_size]
    picked = pick_with_content(hr, data.val_size, data.scale)
    flat = int((detail_level(hr[picked], data.scale) < FLAT_DETAIL).sum())
    if len(picked) < data.val_size or flat:
        logger.warning("data.val gave %d of data.val_size=%d crops, %d of them flat (of %d looked at)",
                       len(picked), data.val_size, flat, hr.shape[0])
    return hr[picked]


class Validator:
    """Holds a fixed validation set (HR, its degraded LR, latents, noise) and scores samplers on it."""

    hr: torch.Tensor
    lr: torch.Tensor
    lr_up: torch.Tensor
    z_lq: torch.Tensor
    sem: torch.Tensor | None
    noise: torch.Tensor
    out_dir: Path

    def __init__(self, cfg: RunConfig, parts, device: torch.device, run_dir: Path) -> None:
        hr = pick_val_images(cfg.data).to(device)
        if not hr.shape[0]:
            raise ValueError(f"data.val={cfg.data.val} gave no validation images; fix data.val or set log.val_every=0")
        # Fixed across the run and restarts; on the CPU, as the degradation requires (noise moved after).
        seed = cfg.seed + 12345
        gen = torch.Generator().manual_seed(seed)
        _, self.z_lq, self.sem, self.lr_up, scores = parts.encode_batch(hr, gen, train=False)
        self.cfg, self.extras = cfg, Extras(lr_up=self.lr_up, scores=scores)  # for the conditioning modules
        # The same degradation again, for the LR itself (shown in the grid).
        self.lr = parts.degradation(hr, torch.Generator().manual_seed(seed), train=False).lr
        self.hr, self.parts, self.name = hr, parts, cfg.name
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
        if getattr(objective, "uses_extras", False):
            model = bind(self.cfg, model, self.extras, train=False)
        outputs, scalars = {}, {}
        for name, sample in samplers.items():
            z0 = sample(model, self.z_lq, self.sem, self.noise).float()
            out = self.parts.autoencoder.decode(z0).float().clamp(0, 1)
            out = (out * 255).round() / 255
            outputs[name] = out
            scalars.update(self._score(name, out))
        scalars.update(self._baseline)
        lr_near = F.interpolate(self.lr, size=self.hr.shape[-2:], mode="nearest")
        columns = {"LR (nearest)": lr_near, "bicubic": self.lr_up, **outputs, "HR": self.hr}
        path, grid = self._sheet(columns, f"validation at step {step}", f"step_{step:08d}.png")
        if objective.guidance_grid:
            self.guidance_sheet(model, objective.guidance_grid, step)
        return scalars, path, grid

    def guidance_sheet(self, model: nn.Module, samplers: dict, step: int) -> Path:
        """One labelled sheet: per crop, bicubic | each sampler of ``samplers`` (e.g. (s_lr, s_sem) pairs) | HR."""
        columns = {"bicubic": self.lr_up}
        for name, sample in samplers.items():
            z0 = sample(model, self.z_lq, self.sem, self.noise).float()
            columns[name] = (self.parts.autoencoder.decode(z0).float().clamp(0, 1) * 255).round() / 255
        columns["HR"] = self.hr
        return self._sheet(columns, f"guidance at step {step}", f"guidance_{step:08d}.png")[0]

    def _sheet(self, columns: dict[str, torch.Tensor], title: str, filename: str) -> tuple[Path, np.ndarray]:
        """One labelled sheet, a row per validation crop and a column per entry of ``columns``; written to
        ``out_dir/filename``."""
        rows = [[column[i] for column in columns.values()] for i in range(self.hr.shape[0])]
        title += f" ({self.name})" if self.name else ""
        grid = make_grid(rows, labels=list(columns), title=title, min_panel=GRID_PANEL)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / filename
        Image.fromarray(grid).save(path)
        return path, grid

    def _score(self, name: str, out: torch.Tensor) -> dict[str, float]:
        labels = {"psnr": "psnr_y(dB)", "ssim": "ssim_y", "lpips": "lpips", "dists": "dists"}
        values = self._metrics.compute(out, self.hr)
        return {f"val/{name}/{labels[k]}": float(np.mean(v)) for k, v in values.items()}
