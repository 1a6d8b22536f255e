"""Logging set-up and the one metrics sink (wandb); both are quiet on ranks other than 0.

Keys follow ``namespace/name(unit)``: ``loss/flow``, ``perf/images_per_s``, ``perf/mfu(%)``,
``time/data(%)``, ``memory/max_allocated(GiB)``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vosr.config import LogConfig

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s [rank{rank}] %(name)s: %(message)s"


def setup_logging(run_dir: Path | None, rank: int) -> None:
    """Rank 0: INFO to the console and ``run_dir/log.txt``; other ranks: WARNING and above only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vosr", False):
            root.removeHandler(handler)
    fmt = logging.Formatter(LOG_FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._vosr = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "PIL", "urllib3", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cut_metrics(path: Path, step: int) -> None:
    """Drop the records after ``step`` from a ``metrics.jsonl`` (a resumed run logs those steps again)."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


class MetricsLogger:
    """wandb on rank 0 (offline by default, resumed by run id on requeue); a no-op elsewhere."""

    enabled: bool
    run_id: str | None

    def __init__(self, cfg: LogConfig, *, run_dir: Path, rank: int, run_id: str | None, name: str,
                 config: dict[str, Any]) -> None:
        self.enabled = rank == 0 and cfg.wandb_mode != "disabled"
        self.run_id = run_id
        self._run = None
        self._jsonl = Path(run_dir) / "metrics.jsonl" if rank == 0 else None
        if not self.enabled:
            return
        import wandb  # imported here only: the one place wandb is used

        self._wandb = wandb
        try:
            self._run = wandb.init(project=cfg.project, name=name, id=run_id, resume="allow", dir=str(run_dir),
                                   mode=cfg.wandb_mode, config=config, settings=wandb.Settings(console="off"))
        except Exception as err:  # a logging backend must never stop (or, on rank 0 only, hang) a training run
            logger.error("wandb did not start (%s: %s); metrics go to %s only", type(err).__name__, err,
                         self._jsonl)
            self.enabled = False
            return
        self.run_id = self._run.id
        logger.info("wandb run %s (%s) in %s", self.run_id, cfg.wandb_mode, run_dir)

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Scalars to wandb and, on rank 0, one JSON line in ``run_dir/metrics.jsonl``."""
        if self._jsonl is not None:
            with self._jsonl.open("a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        if self._run is not None:
            self._run.log(dict(scalars), step=step)

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """``image``: HxWx3 uint8."""
        if self._run is not None:
            self._run.log({key: self._wandb.Image(image, caption=caption)}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
