"""The shipped run configs load, carry the reference's defaults, and fit slurm/stage.sh's default geometry."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from vosr.config import load_run_config

SHIPPED = sorted((REPO / "configs").glob("teacher/*.yaml")) + sorted((REPO / "configs").glob("distill/*.yaml"))


def _default_ranks() -> int:
    """Ranks of slurm/stage.sh's #SBATCH defaults (nodes x tasks per node)."""
    text = (REPO / "slurm" / "stage.sh").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    tasks = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", text).group(1))
    return nodes * tasks


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_defaults(path: Path) -> None:
    cfg = load_run_config(str(path))
    assert cfg.data.batch_size * cfg.optim.grad_accum * _default_ranks() == cfg.engine.global_batch_size
    assert not cfg.optim.ema_warmup and cfg.optim.ema_decay == 0.9999 and cfg.optim.warmup_steps == 0
    assert cfg.optim.decay_1d and cfg.autoencoder.sample_posterior
    if cfg.stage == "teacher":
        assert cfg.flow.guidance == -0.5 and cfg.flow.weak_anchor == 0.15 and cfg.engine.global_batch_size == 512
    else:
        assert (cfg.distill.guidance, cfg.distill.weak_anchor, cfg.engine.global_batch_size) == (0.5, 0.1, 32)
        assert cfg.optim.lr == 2e-5 and cfg.distill.objective == "rcgm"


def test_both_sizes_ship_both_stages() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in SHIPPED}
    assert {"teacher/vosr_0.5b", "teacher/vosr_1.4b", "distill/vosr_0.5b_onestep",
            "distill/vosr_1.4b_onestep"} <= names
