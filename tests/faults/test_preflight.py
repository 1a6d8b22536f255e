"""Every config check before heavy work, one line each: what vosr.train, vosr.distill and vosr.launch --dry-run
share (vosr.training.preflight), and the shipped configs with their Slurm script's default geometry."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.helpers import REPO, TINY
from vosr import launch
from vosr.config import ConfigError, load_run_config
from vosr.training.preflight import preflight, world_size_from_env

SHIPPED = sorted((REPO / "configs").glob("teacher/*.yaml")) + sorted((REPO / "configs").glob("distill/*.yaml"))
SCRIPT = {"teacher": REPO / "slurm" / "train_teacher.sh", "distill": REPO / "slurm" / "distill.sh"}


def _geometry(script: Path) -> tuple[int, int]:
    text = script.read_text()
    return (int(re.search(r"^#SBATCH --nodes=(\d+)", text, re.M).group(1)),
            int(re.search(r"^#SBATCH --ntasks-per-node=(\d+)", text, re.M).group(1)))


def _stand_ins(tmp_path: Path, shards: Path, stage: str) -> list[str]:
    """Overrides replacing the shipped configs' /path/to placeholders by existing files."""
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"x")
    extra = [f"autoencoder.path={weights}", f"semantic.path={weights}", f"data.train=[{{shards: '{shards}'}}]",
             f"data.val={shards}", f"run_dir={tmp_path / 'run'}"]
    return extra + ([f"distill.teacher={weights}"] if stage == "distill" else [])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_passes_dry_run_with_its_script_geometry(path, photo_shards, tmp_path, caplog):
    stage = load_run_config(str(path)).stage
    nodes, tasks = _geometry(SCRIPT[stage])
    args = [stage, "--config", str(path), "--nodes", str(nodes), "--tasks-per-node", str(tasks), "--dry-run",
            "--folder", str(tmp_path / "submitit"), *_stand_ins(tmp_path, photo_shards[0].parent, stage)]
    assert launch.main(args) == 0
    assert not any("derived" in r.getMessage() for r in caplog.records)  # the geometry it was written for


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_teacher_config_runs_unchanged_on_any_node_count(nodes, photo_shards, tmp_path):
    """The README's lines (torchrun on one node of 8, sbatch/launch --nodes 4): the global batch stays 512."""
    cfg = load_run_config(str(REPO / "configs/teacher/vosr_0.5b.yaml"),
                          _stand_ins(tmp_path, photo_shards[0].parent, "teacher"))
    notes = preflight(cfg, nodes * 8)
    assert cfg.data.batch_size * cfg.optim.grad_accum * nodes * 8 == cfg.engine.global_batch_size == 512
    assert bool(notes) == (nodes != 2) and all("derived from engine.global_batch_size=512" in n for n in notes)


def test_world_size_from_launcher_env():
    assert world_size_from_env({}) == 1
    assert world_size_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == 8
    assert world_size_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}) == 16


LAUNCH_TOO = ("log.every_steps=0", "model.preset=huge", "data.val=/no/such/val", "engine.global_batch_size=6")
"""Also tried through ``vosr.launch --dry-run`` (the same preflight; each subprocess costs seconds)."""


@pytest.mark.parametrize("override, key", [
    ("log.every_steps=0", "log.every_steps"),
    ("data.crop_size=0", "data.crop_size"),
    ("data.crop_size=68", "data.crop_size"),
    ("model.preset=huge", "model.preset"),
    ("semantic.timm_name=vit_nope", "semantic.timm_name"),
    ("checkpoint.resume=/no/such/step", "checkpoint.resume"),
    ("data.val=/no/such/val", "data.val"),
    ("engine.global_batch_size=6", "engine.global_batch_size"),
    ("optim.lr=abc", "optim.lr=abc"),
    ("data.train=[{shards: x", "data.train"),
])
def test_config_errors_are_one_line_before_any_work(override, key, photo_shards, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", TINY, f"data.train=[{{shards: '{photo_shards[0].parent}'}}]", f"run_dir={run_dir}", override]
    for module in ("vosr.train", "vosr.launch") if override in LAUNCH_TOO else ("vosr.train",):
        argv = [sys.executable, "-m", module, *(["teacher", "--dry-run"] if module == "vosr.launch" else []), *args]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (module, proc.stderr[-2000:])
        assert len([ln for ln in lines if ln.startswith("error: ")]) == 1 and "Traceback" not in proc.stderr
        assert key in lines[-1] and ";" in lines[-1], lines[-1]
    assert not run_dir.exists()


def test_yaml_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: teacher\nmodel:\n  preset: [tiny\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: line \d+, column \d+: YAML error"):
        load_run_config(str(bad))


def test_a_run_derives_its_accumulation_from_the_global_batch(photo_shards, tmp_path, capsys):
    from tests.training.helpers import read_metrics, tiny_overrides
    from vosr import train

    run_dir = tmp_path / "run"
    args = ["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, "engine.global_batch_size=8",
                                              "optim.grad_accum=1", "optim.max_steps=1", "engine.zero_stage=1",
                                              "log.wandb_mode=disabled", "data.crops_per_image=1")]
    assert train.main(args) == 0
    assert "note: gradient accumulation 2 derived from engine.global_batch_size=8" in capsys.readouterr().err
    assert read_metrics(run_dir)[1]["progress/images"] == 8
    assert "global batch 8 (engine.global_batch_size, fixed)" in (run_dir / "log.txt").read_text()
