"""``vosr.infer`` guidance knobs (issue 10): per-branch teacher guidance, a guidance-conditioned student."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.infer import main
from vosr.training.export import GUIDANCE_RANGE_KEY, read_metadata

FAST = ["--steps", "2", "--device", "cpu"]
OMEGA = ("model.with_r=true", "model.with_omega=true", "distill.guidance_range=[-0.5,1.0]")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


@pytest.fixture(scope="module")
def omega_student(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "omega.safetensors", *OMEGA)


@pytest.fixture(scope="module")
def plain_student(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "student.safetensors", "model.with_r=true")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray(photo(1, 24, 24, 60, 90)).save(path)
    return path


def _run(ckpt: Path, src: Path, out: Path, *flags: str) -> np.ndarray | int:
    rc = main(["-c", str(ckpt), "-i", str(src), "-o", str(out), *flags])
    if rc:
        return rc
    with Image.open(out / "a.png") as img:
        return np.asarray(img).astype(np.int32)


def test_teacher_per_branch_flags(tmp_path, teacher, image):
    base = _run(teacher, image, tmp_path / "s", *FAST, "--guidance", "0.5")
    same = _run(teacher, image, tmp_path / "same", *FAST, "--guidance-lr", "0.5", "--guidance-sem", "0.5")
    assert np.array_equal(base, same)  # equal branches = the single knob, bit for bit
    split = _run(teacher, image, tmp_path / "split", *FAST, "--guidance", "0.5", "--guidance-sem", "2.0")
    assert np.abs(split - base).max() > 0


def test_omega_student_takes_guidance_inside_its_range(tmp_path, omega_student, image, capsys):
    assert GUIDANCE_RANGE_KEY in read_metadata(omega_student)
    low = _run(omega_student, image, tmp_path / "lo", "--device", "cpu", "--guidance", "-0.5")
    high = _run(omega_student, image, tmp_path / "hi", "--device", "cpu", "--guidance", "1.0")
    assert np.abs(low - high).max() > 0  # omega is live
    capsys.readouterr()
    assert _run(omega_student, image, tmp_path / "out", "--device", "cpu", "--guidance", "1.5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "[-0.5, 1]" in err[0]
    assert _run(omega_student, image, tmp_path / "w", "--device", "cpu", "--guidance-sem", "1.0") == 2


def test_plain_student_unchanged_and_refuses_guidance(tmp_path, plain_student, image, capsys):
    assert GUIDANCE_RANGE_KEY not in read_metadata(plain_student)
    assert isinstance(_run(plain_student, image, tmp_path / "ok", "--device", "cpu"), np.ndarray)
    assert _run(plain_student, image, tmp_path / "g", "--device", "cpu", "--guidance", "0.5") == 2
    assert "fixed at distillation" in capsys.readouterr().err


def test_guidance_sweep_writes_one_labelled_sheet(tmp_path, teacher, omega_student, plain_student, image, capsys):
    from vosr.inference.sweep import parse_sweep, sharpness

    assert parse_sweep("-0.5:1.5:5") == [-0.5, 0.0, 0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="lo:hi:n"):
        parse_sweep("1:2")
    import torch

    flat, edges = torch.full((1, 3, 16, 16), 0.5), torch.zeros(1, 3, 16, 16)
    edges[..., ::2] = 1.0
    assert sharpness(flat) == 0 and sharpness(edges) > 10
    out = tmp_path / "sweep"
    assert main(["-c", str(teacher), "-i", str(image), "-o", str(out), *FAST, "--guidance-sweep=-0.5:1.5:3"]) == 0
    with Image.open(out / "a_sweep.png") as sheet:
        assert sheet.width > 4 * 256  # bicubic + 3 panels
    assert not (out / "a.png").exists()
    assert main(["-c", str(teacher), "-i", str(image), "-o", str(tmp_path / "sem"), *FAST, "--guidance-lr", "1",
                 "--guidance-sweep", "0:2:2"]) == 0
    assert main(["-c", str(omega_student), "-i", str(image), "-o", str(tmp_path / "om"), "--device", "cpu",
                 "--guidance-sweep=-0.5:1:3"]) == 0
    assert (tmp_path / "om" / "a_sweep.png").is_file()
    capsys.readouterr()
    assert main(["-c", str(omega_student), "-i", str(image), "-o", str(tmp_path / "bad"), "--device", "cpu",
                 "--guidance-sweep", "0:3:2"]) == 2
    assert "[-0.5, 1]" in capsys.readouterr().err
    assert main(["-c", str(plain_student), "-i", str(image), "-o", str(tmp_path / "p"), "--device", "cpu",
                 "--guidance-sweep", "0:1:2"]) == 2
    Image.open(image).save(image.parent / "b.png")
    assert main(["-c", str(teacher), "-i", str(image.parent), "-o", str(tmp_path / "many"), *FAST,
                 "--guidance-sweep", "0:1:2"]) == 2
    assert "one image" in capsys.readouterr().err
