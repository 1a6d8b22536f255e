"""The README's first command: scripts/demo.sh end to end on the installed wallpapers (few steps)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.photos import wallpaper_dirs

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_every_stage(tmp_path):
    try:
        wallpaper_dirs()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path / "demo"
    env = {**os.environ, "VOSR_DEMO_DIR": str(out), "VOSR_DEMO_TEACHER_STEPS": "4", "VOSR_DEMO_STUDENT_STEPS": "2",
           "VOSR_PYTHON": sys.executable}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["samples"] > 50 and manifest["shards"]
    for path in ("pairs.png", "teacher/ema.safetensors", "student/ema.safetensors",
                 "report_student/comparison.png", "report_teacher/summary.json"):
        assert (out / path).is_file(), path
    summary = json.loads((out / "report_student" / "summary.json").read_text())
    assert summary["images"] == len(list((out / "evalset" / "LR").iterdir()))
    assert str(out / "report_student" / "comparison.png") in done.stdout
