"""The validation set skips flat crops, and its grid is labelled and readable (real tiny parts, real photos)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tests.conftest import real_photos, write_shards
from tests.training.helpers import TINY
from vosr.config import load_run_config
from vosr.images import FLAT_DETAIL, detail_level
from vosr.training.setup import build_frozen_parts
from vosr.training.teacher import build_teacher
from vosr.training.validation import GRID_PANEL, Validator


def test_validation_skips_flat_crops_and_labels_a_readable_grid(tmp_path):
    photos = [p[:96, :96, :3] for p in real_photos()[:3]]
    white, sky = np.full((96, 96, 3), 255, np.uint8), np.full((96, 96, 3), (120, 160, 220), np.uint8)
    write_shards(tmp_path / "val", [white, photos[0], sky, photos[1], photos[2]], per_shard=5)
    cfg = load_run_config(TINY, [f"data.val={tmp_path / 'val'}", "data.val_size=3", "log.val_every=1"])
    parts = build_frozen_parts(cfg, torch.device("cpu"))
    validator = Validator(cfg, parts, torch.device("cpu"), tmp_path / "run")
    assert validator.hr.shape == (3, 3, 64, 64)
    assert bool((detail_level(validator.hr, 4) >= FLAT_DETAIL).all())  # white and sky left out
    assert validator.lr.shape == (3, 3, 16, 16)
    model, objective = build_teacher(cfg, parts, torch.device("cpu"))
    scalars, path, grid = validator.run(model.eval(), objective, step=7)
    assert path.name == "step_00000007.png" and "val/teacher/psnr_y(dB)" in scalars
    # LR (nearest) | bicubic | teacher | HR, each 64-px crop shown at 192 px, under a title and labels
    panels_h = 3 * GRID_PANEL + 2 * 2
    assert grid.shape[1] == 4 * GRID_PANEL + 3 * 2 and grid.shape[0] > panels_h + 20, grid.shape
    header = np.asarray(Image.open(path))[: grid.shape[0] - panels_h]
    assert (header < 128).any(), "no label text above the panels"
