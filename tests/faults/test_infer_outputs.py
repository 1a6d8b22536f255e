"""Inference outputs never become inputs: ``-o`` = ``-i`` is refused for every input type, and a folder's own
outputs (marked in their PNG metadata) are skipped when the folder is used as input again."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.images import is_vosr_output
from vosr.infer import main

FAST = ["--steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_output_folder_equal_to_input_is_refused(tmp_path, teacher, ext, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(0, 16, 16)).save(src / f"a.{ext}")
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(src), *FAST]) == 2
    assert "is the input" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == [f"a.{ext}"]
    assert main(["-c", str(teacher), "-i", str(src / f"a.{ext}"), "-o", str(src / f"a.{ext}"), *FAST]) == 2


def test_own_outputs_are_never_inputs(tmp_path, teacher):
    """Outputs written next to .jpg inputs (-o inside -i's tree, then the folder reused as -i): skipped."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(photo(1, 16, 16)).save(src / "a.jpg", quality=95)
    Image.fromarray(photo(2, 16, 16)).save(src / "b.png")  # a user's own PNG: an input
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(out), *FAST]) == 0
    assert is_vosr_output(out / "a.png") and not is_vosr_output(src / "b.png")
    for p in out.iterdir():  # the outputs end up among the inputs
        p.rename(src / f"up_{p.name}")
    again = tmp_path / "again"
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(again), *FAST]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["a.png", "b.png"]  # not up_a.png, up_b.png
