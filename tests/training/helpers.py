"""Helpers for end-to-end training tests: tiny configs, running stages, reading metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vosr.runtime.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def tiny_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """Overrides that make configs/tiny.yaml a seconds-long CPU run on ``shards``."""
    return [f"data.train=[{{shards: '{shards}'}}]", f"run_dir={run_dir}", "data.num_workers=0",
            "log.every_steps=1", "log.progress=false", "log.wandb_mode=offline", *extra]


def read_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """Last logged record per step from ``metrics.jsonl``."""
    out: dict[int, dict[str, float]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def torchrun_cmd(module: str, args: list[str], nproc: int = 2) -> list[str]:
    """``torchrun`` of ``python -m module`` on a free port.

    Not ``--master_port=0``: torch 2.14's launcher hands port 0 itself to the workers, whose
    rank 0 then serves on a random port that the other ranks never find (a silent hang).
    """
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", module, *args]


def torchrun_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **(env or {})}


def torchrun(module: str, args: list[str], nproc: int = 2, timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module`` under torchrun with ``nproc`` CPU processes over gloo."""
    return subprocess.run(torchrun_cmd(module, args, nproc), cwd=REPO, env=torchrun_env(env), capture_output=True,
                          text=True, timeout=timeout)
