"""Each conditioning module through ``vosr.train`` -> export -> ``vosr.distill`` (from a teacher trained without
it) -> ``vosr.infer`` with it on, on the tiny CPU config and real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import real_photos, write_shards
from tests.export_helpers import photo
from tests.training.helpers import REPO, TINY, read_metrics, tiny_overrides
from vosr import distill, infer, train
from vosr.inference.pipeline import load_pipeline
from vosr.training.export import load_export

TINY_DISTILL = str(REPO / "configs" / "tiny_distill.yaml")
MODULES = {
    "lr_pixel": ["model.lr_pixel_branch=true", "model.lr_pixel_blocks=1"],
    "degradation": ["model.degradation_condition=true", "model.degradation_estimator=true",
                    "model.degradation_drop=0.5"],
    "cond_noise": ["flow.cond_noise_map=gradient", "flow.cond_noise_a_min=0.8"],
    "dinov3": ["semantic.timm_name=vit_small_patch16_dinov3", "semantic.input_size=64",
               "semantic.timm_kwargs={depth: 2, embed_dim: 32, num_heads: 2}"],
}
INFER = {"lr_pixel": [], "degradation": ["--degradation", "noise=0.3,blur=0.5,jpeg=0.2"],
         "cond_noise": ["--cond-noise", "0.5"], "dinov3": []}
NEUTRAL = ("lr_pixel", "degradation", "cond_noise")
"""Modules that add parameters (or none) to the plain model; DINOv3 changes the token width."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    crops = []
    for p in real_photos()[:3]:
        for _ in range(2):
            y, x = int(rng.integers(0, p.shape[0] - 128)), int(rng.integers(0, p.shape[1] - 128))
            crops.append(np.ascontiguousarray(p[y:y + 128, x:x + 128, :3]))
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, crops, per_shard=3)
    return out


@pytest.fixture(scope="module")
def plain_teacher(shards, tmp_path_factory) -> Path:
    """A 2-step teacher with every module off."""
    run_dir = tmp_path_factory.mktemp("plain")
    assert train.main(["--config", TINY, *tiny_overrides(shards, run_dir, "optim.max_steps=2",
                                                          "checkpoint.every_steps=2", "data.batch_size=2")]) == 0
    return run_dir / "ema.safetensors"


def _image(tmp_path: Path) -> Path:
    src = tmp_path / "in" / "lr.png"
    src.parent.mkdir(parents=True)
    Image.fromarray(photo(1, 24, 40, 10, 10)).save(src)
    return src.parent


@pytest.mark.parametrize("module", sorted(MODULES))
def test_train_distill_infer(module: str, shards: Path, plain_teacher: Path, tmp_path: Path) -> None:
    on = MODULES[module]
    # 1. vosr.train with the module on; the export carries the setting.
    teacher_dir = tmp_path / "teacher"
    assert train.main(["--config", TINY, *tiny_overrides(shards, teacher_dir, "optim.max_steps=2", "data.batch_size=2",
                                                          "checkpoint.every_steps=2", "log.val_every=2",
                                                          f"data.val={shards}", "data.val_size=2",
                                                          "flow.sample_steps=2", *on)]) == 0
    assert "val/teacher/psnr_y(dB)" in read_metrics(teacher_dir)[2]  # validation samples with the module on
    state, cfg = load_export(teacher_dir / "ema.safetensors")
    if module == "lr_pixel":
        assert cfg.model.lr_pixel_branch and cfg.model.lr_pixel_blocks == 1
        assert any(k.startswith("lr_branch.") for k in state)
    elif module == "degradation":
        assert cfg.model.degradation_condition and cfg.model.degradation_estimator
        assert any(k.startswith("degradation_head.") for k in state)
        assert "loss/degradation_estimator" in read_metrics(teacher_dir)[2]
    elif module == "cond_noise":
        assert cfg.flow.cond_noise_map == "gradient" and cfg.flow.cond_noise_a_min == 0.8
    else:
        assert cfg.semantic.timm_name == "vit_small_patch16_dinov3"
        assert state["mlp_ca.fc1.weight"].shape[1] == 32
    # 2. vosr.distill with the module on, from the plain teacher (the new parameters start neutral), or for
    # DINOv3 (other token width) from the teacher just trained.
    student_dir = tmp_path / "student"
    source = plain_teacher if module in NEUTRAL else teacher_dir / "ema.safetensors"
    assert distill.main(["--config", TINY_DISTILL, f"distill.teacher={source}",
                         *tiny_overrides(shards, student_dir, "optim.max_steps=1", "checkpoint.every_steps=1",
                                         "data.batch_size=2", *on)]) == 0
    # 3. vosr.infer with it on, for the module-trained teacher and the student.
    src = _image(tmp_path)
    for ckpt in (teacher_dir / "ema.safetensors", student_dir / "ema.safetensors"):
        out = tmp_path / f"out-{ckpt.parent.name}"
        assert infer.main(["-c", str(ckpt), "-i", str(src), "-o", str(out), "--steps", "2", "--device", "cpu",
                           *INFER[module]]) == 0
        assert np.asarray(Image.open(out / "lr.png")).shape == (96, 160, 3)
    if module == "degradation":  # without --degradation the estimator's scores are used
        pipe = load_pipeline(teacher_dir / "ema.safetensors")
        sem = torch.randn(1, 3, pipe.semantic.num_tokens, pipe.semantic.dim)  # (B, tiles, N, D)
        scores = pipe.degradation_scores(None, sem, 1)
        assert scores.shape == (1, 8) and 0 < scores.min() and scores.max() < 1
        assert infer.main(["-c", str(teacher_dir / "ema.safetensors"), "-i", str(src), "-o", str(tmp_path / "est"),
                           "--steps", "1", "--device", "cpu"]) == 0


def test_plain_teacher_loads_into_module_student_neutrally(plain_teacher: Path, shards: Path) -> None:
    """Teacher and student built with every module on from a teacher trained without: same velocity."""
    from vosr.config import load_run_config
    from vosr.training import student as student_stage
    from vosr.training.setup import build_frozen_parts

    on = [o for name in NEUTRAL for o in MODULES[name]]
    cfg = load_run_config(TINY_DISTILL, [f"distill.teacher={plain_teacher}", f"data.train=[{{shards: '{shards}'}}]",
                                         *on])
    parts = build_frozen_parts(cfg, torch.device("cpu"))
    teacher, student = student_stage.build_teacher_and_student(cfg, parts, torch.device("cpu"))
    assert student.lr_branch is not None and student.degradation_head is not None
    plain = load_pipeline(plain_teacher).model
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 64, 64, generator=gen)
    _, z_lq, sem, lr_up, scores = parts.encode_batch(hr, gen, train=False)
    x_in = torch.cat([z_lq, torch.randn(z_lq.shape, generator=gen)], dim=1)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ref = plain(x_in, t, sem, None)
        kw = dict(degradation=scores, lr_pixels=lr_up)
        torch.testing.assert_close(teacher(x_in, t, sem, None, **kw), ref)
        torch.testing.assert_close(student(x_in, t, sem, t, **kw), ref, atol=1e-5, rtol=1e-5)
    assert ref.abs().mean() > 0


def test_infer_flag_errors(plain_teacher: Path, tmp_path: Path) -> None:
    src = _image(tmp_path)
    args = ["-c", str(plain_teacher), "-i", str(src), "-o", str(tmp_path / "o"), "--steps", "1"]
    assert infer.main([*args, "--degradation", "noise=0.3"]) == 2  # the model has no degradation conditioning
    assert infer.main([*args, "--cond-noise", "1.5"]) == 2
