"""Distillation knobs of issue 10 end to end on real parts (tiny teacher export, real shards, DeepSpeed on
the CPU): a guidance-conditioned student (distill.guidance_range) and the Gram texture loss."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.export_helpers import photo
from tests.training.helpers import TINY, read_metrics, tiny_overrides
from tests.training.test_distill_run import TINY_DISTILL
from vosr import distill, infer, train
from vosr.config import load_run_config
from vosr.training.export import GUIDANCE_RANGE_KEY, load_export, read_metadata
from vosr.training.setup import build_frozen_parts
from vosr.training.student import gram_flops


@pytest.fixture
def teacher_run(photo_shards, tmp_path) -> Path:
    run_dir = tmp_path / "teacher"
    assert train.main(["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=2",
                                                          "checkpoint.every_steps=2", "flow.sem_drop_ratio=0.3")]) == 0
    assert "flow/sem_drop_fraction" in read_metrics(run_dir)[1]
    return run_dir


def test_guidance_conditioned_student_with_gram_loss(teacher_run, photo_shards, tmp_path, capsys):
    run_dir = tmp_path / "student"
    args = ["--config", TINY_DISTILL, f"distill.teacher={teacher_run}", "distill.guidance_range=[0.0,1.0]",
            "distill.gram_weight=2.0", "distill.gram_blocks=[0,1]",
            *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2",
                            "log.val_every=2", f"data.val={photo_shards[0].parent}", "data.val_size=1")]
    assert distill.main(args) == 0
    metrics = read_metrics(run_dir)
    for step in (1, 2):
        m = metrics[step]
        assert m["loss/gram"] > 0 and math.isfinite(m["loss/distill"])
        assert m["loss/distill"] == pytest.approx(m["loss/distill_v"] + m["loss/distill_u"] + 2.0 * m["loss/gram"],
                                                  rel=1e-4)
    assert any(k.startswith("val/student/") for k in metrics[2])
    export = run_dir / "ema.safetensors"
    assert read_metadata(export)[GUIDANCE_RANGE_KEY] == "[0.0, 1.0]"
    weights, cfg = load_export(export)
    assert cfg.model.with_omega and cfg.distill.guidance_range == [0.0, 1.0]
    assert any(k.startswith("omega_embedder.") for k in weights)
    # Gram FLOPs are part of the step's count.
    cfg_run = load_run_config(TINY_DISTILL, [f"distill.teacher={teacher_run}", "distill.gram_weight=1.0"])
    assert gram_flops(cfg_run, build_frozen_parts(cfg_run, __import__("torch").device("cpu"))) > 0
    # Inference: --guidance inside the range works, outside is a one-line error naming the range.
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    Image.fromarray(photo(0, 20, 20, 40, 40)).save(src)
    assert infer.main(["-c", str(run_dir), "-i", str(src), "-o", str(tmp_path / "o"), "--device", "cpu",
                       "--guidance", "0.25"]) == 0
    capsys.readouterr()
    assert infer.main(["-c", str(run_dir), "-i", str(src), "-o", str(tmp_path / "o2"), "--device", "cpu",
                       "--guidance", "2"]) == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_plain_student_has_no_omega(teacher_run, photo_shards, tmp_path):
    run_dir = tmp_path / "plain"
    args = ["--config", TINY_DISTILL, f"distill.teacher={teacher_run}",
            *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=1", "checkpoint.every_steps=1")]
    assert distill.main(args) == 0
    weights = load_file(str(run_dir / "ema.safetensors"))
    assert not any(k.startswith("omega_embedder.") for k in weights)
    assert GUIDANCE_RANGE_KEY not in read_metadata(run_dir / "ema.safetensors")
    assert "loss/gram" not in read_metrics(run_dir)[1]


def test_teacher_validation_writes_the_guidance_grid_sheet(photo_shards, tmp_path):
    run_dir = tmp_path / "teacher_grid"
    args = ["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=1",
                                              "checkpoint.every_steps=1", "log.val_every=1",
                                              f"data.val={photo_shards[0].parent}", "data.val_size=2",
                                              "flow.sample_steps=2", "flow.val_guidance_grid=[[0.5,0.5],[0.5,1.5]]")]
    assert train.main(args) == 0
    sheets = list((run_dir / "val").glob("guidance_*.png"))
    assert len(sheets) == 1
    with Image.open(sheets[0]) as sheet:
        assert sheet.width > 4 * 192  # bicubic | two pairs | HR, panels enlarged to 192 px
