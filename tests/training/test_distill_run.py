"""The one-step distillation run on real parts: tiny teacher export -> student, one and two CPU processes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import REPO, TINY, read_metrics, tiny_overrides, torchrun
from vosr import distill, train
from vosr.config import load_run_config
from vosr.method.flow import sample_euler
from vosr.runtime.checkpoint import complete_checkpoints
from vosr.training import student as student_stage
from vosr.training.export import load_export
from vosr.training.setup import build_frozen_parts

TINY_DISTILL = str(REPO / "configs" / "tiny_distill.yaml")


@pytest.fixture
def teacher_run(photo_shards, tmp_path) -> Path:
    """A 3-step tiny teacher with its ``ema.safetensors`` export."""
    run_dir = tmp_path / "teacher"
    assert train.main(["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=3",
                                                          "checkpoint.every_steps=3")]) == 0
    return run_dir


def test_student_with_r_equal_t_reproduces_teacher_after_init(teacher_run, photo_shards):
    cfg = load_run_config(TINY_DISTILL, [f"distill.teacher={teacher_run}",
                                         f"data.train=[{{shards: '{photo_shards[0].parent}'}}]"])
    parts = build_frozen_parts(cfg, torch.device("cpu"))
    teacher, student = student_stage.build_teacher_and_student(cfg, parts, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 64, 64, generator=gen)
    _, z_lq, sem, _ = parts.encode_pair(hr, gen, train=False)
    noise = torch.randn(z_lq.shape, generator=gen)
    t = torch.tensor([0.3, 0.8])
    x = torch.randn(z_lq.shape, generator=gen)
    x_in = torch.cat([z_lq, x], dim=1)
    with torch.no_grad():
        v_teacher = teacher(x_in, t, sem, None)
        v_student = student(x_in, t, sem, t)
        torch.testing.assert_close(v_student, v_teacher, atol=1e-5, rtol=1e-5)
        # And the whole sampler: the student used as a multi-step model gives the teacher's image.
        kw = dict(steps=4, guidance=cfg.flow.guidance, weak_anchor=cfg.flow.weak_anchor)
        out_t = sample_euler(teacher, z_lq, sem, noise, **kw)
        out_s = sample_euler(lambda x_in, t, sem, r: student(x_in, t, sem, t), z_lq, sem, noise, **kw)
    torch.testing.assert_close(out_s, out_t, atol=1e-5, rtol=1e-5)
    assert v_teacher.abs().mean() > 0  # a trained teacher, not the zero-initialised output layer


def test_distill_runs_logs_and_exports_student(teacher_run, photo_shards, tmp_path):
    run_dir = tmp_path / "student"
    args = ["--config", TINY_DISTILL, f"distill.teacher={teacher_run / 'ema.safetensors'}",
            *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=3", "checkpoint.every_steps=3",
                            "log.val_every=3", f"data.val={photo_shards[0].parent}",
                            "data.val_size=2")]
    assert distill.main(args) == 0
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3]
    loss_keys = [k for k in metrics[1] if k.startswith("loss/")]
    assert loss_keys and all(math.isfinite(metrics[s][k]) for s in metrics for k in loss_keys)
    # The validation grid compares the one-step student and the multi-step teacher.
    assert any(k.startswith("val/student/") for k in metrics[3])
    assert any(k.startswith("val/teacher/") for k in metrics[3])
    assert list((run_dir / "val").glob("step_*.png"))
    student = load_file(str(run_dir / "ema.safetensors"))
    teacher = load_file(str(teacher_run / "ema.safetensors"))
    assert any(k.startswith("r_embedder.") for k in student) and not any(k.startswith("r_embedder.") for k in teacher)
    assert load_export(run_dir / "ema.safetensors")[1].model.with_r  # recorded as a one-step model
    assert not torch.equal(student["blocks.0.attn.qkv.weight"], teacher["blocks.0.attn.qkv.weight"])


def test_missing_teacher_fails_naming_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill.teacher"):
        distill.main(["--config", TINY_DISTILL, f"distill.teacher={tmp_path / 'nope.safetensors'}", "--debug"])


@pytest.mark.dist
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_distill_with_resume(teacher_run, photo_shards, tmp_path, stage):
    """Under ZeRO-3 the student's several forwards per step (some without gradient) gather its partitioned
    weights through DeepSpeed's hooks; the EMA export is gathered whole and differs from the teacher."""
    run_dir = tmp_path / "student2"
    args = ["--config", TINY_DISTILL, f"distill.teacher={teacher_run}",
            *tiny_overrides(photo_shards[0].parent, run_dir, f"engine.zero_stage={stage}", "checkpoint.every_steps=2")]
    first = torchrun("vosr.distill", [*args, "optim.max_steps=2"])
    assert first.returncode == 0, first.stderr[-4000:]
    ema_first = load_file(str(run_dir / "ema.safetensors"))
    second = torchrun("vosr.distill", [*args, "optim.max_steps=4"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    metrics = read_metrics(run_dir)
    assert sorted(metrics) == [1, 2, 3, 4]
    assert all(math.isfinite(v) for m in metrics.values() for k, v in m.items() if k.startswith("loss/"))
    student, teacher = load_file(str(run_dir / "ema.safetensors")), load_file(str(teacher_run / "ema.safetensors"))
    key = "blocks.0.attn.qkv.weight"
    assert student[key].shape == teacher[key].shape  # gathered, not a ZeRO-3 shard
    assert any(k.startswith("r_embedder.") for k in student)
    assert not torch.equal(student[key], teacher[key]) and not torch.equal(student[key], ema_first[key])


def test_optional_lpips_term_trains_through_the_decoder(teacher_run, photo_shards, tmp_path):
    from vosr.evaluation.metrics import lpips_unavailable_reason

    if (reason := lpips_unavailable_reason()) is not None:
        pytest.skip(reason)
    run_dir = tmp_path / "student_lpips"
    args = ["--config", TINY_DISTILL, f"distill.teacher={teacher_run}", "distill.lpips_weight=0.5",
            *tiny_overrides(photo_shards[0].parent, run_dir, "optim.max_steps=2", "checkpoint.every_steps=2")]
    assert distill.main(args) == 0
    metrics = read_metrics(run_dir)
    for step in (1, 2):
        lp, total = metrics[step]["loss/lpips"], metrics[step]["loss/distill"]
        assert 0 < lp < 2 and math.isfinite(total)
        # The logged total includes the weighted LPIPS term.
        assert total == pytest.approx(metrics[step]["loss/distill_v"] + metrics[step]["loss/distill_u"] + 0.5 * lp,
                                      rel=1e-4)
