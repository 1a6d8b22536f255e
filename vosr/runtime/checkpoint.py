"""Atomic, resumable checkpoints: DeepSpeed shards + EMA + RNG + train/data state + config.

Layout of ``<run_dir>/checkpoints/step_00001000/``: DeepSpeed's files (model/optimizer shards,
scheduler, client state), ``ema_rank*.pt`` (the EMA shard of each rank under ZeRO-3, else rank 0
only), ``rng_rank*.pt`` (python, numpy, torch, cuda and the run's own generators),
``data_rank*.json`` (the data stream's position on each rank, plain json) and ``complete.json``
written last. Everything is written under ``.tmp/`` and the folder is renamed
into place, so a checkpoint either exists complete or not at all.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vosr.runtime import distributed
from vosr.runtime.ema import is_zero3_partitioned
from vosr.runtime.engine import TrainEngine

logger = logging.getLogger(__name__)

MARKER = "complete.json"
NAME_RE = re.compile(r"^step_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if NAME_RE.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(NAME_RE.match(p.name).group(1)))


def data_file(rank: int) -> str:
    """Name of rank ``rank``'s data-position file in a checkpoint folder."""
    return f"data_rank{rank:05d}.json"


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG this rank uses, for bit-exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, gen in generators.items():
        if key in state["generators"]:
            gen.set_state(state["generators"][key])


class Checkpointer:
    """Saves, finds, loads and prunes checkpoints of one run; every method is collective."""

    root: Path
    keep: int
    rank: int

    def __init__(self, root: Path, keep: int, rank: int) -> None:
        self.root, self.keep, self.rank = Path(root), keep, rank

    def save(self, engine: TrainEngine, step: int, state: dict, generators: dict[str, torch.Generator],
             data_state: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` on every rank, then publish it atomically (rank 0 renames).

        ``data_state``: this rank's data-stream position (json types), restored by :meth:`load`.
        """
        name = checkpoint_name(step)
        tmp_root = self.root / ".tmp"
        if self.rank == 0:
            shutil.rmtree(tmp_root / name, ignore_errors=True)
            tmp_root.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        t0 = time.time()
        engine.save(str(tmp_root), name, client_state={"vosr": state})
        folder = tmp_root / name
        if self.rank == 0 or _ema_sharded(engine):
            torch.save(engine.ema.state_dict(), folder / f"ema_rank{self.rank:05d}.pt")
        torch.save(rng_state(generators), folder / f"rng_rank{self.rank:05d}.pt")
        if data_state is not None:
            (folder / data_file(self.rank)).write_text(json.dumps(data_state))
        distributed.barrier()
        final = self.root / name
        if self.rank == 0:
            (folder / MARKER).write_text(json.dumps({"step": step, "time": time.time(), **_summary(state)}))
            if final.exists():  # a save of this step survived from an earlier life of the run
                shutil.rmtree(final)
            os.replace(folder, final)
            self._prune()
        distributed.barrier()
        logger.info("saved checkpoint %s in %.1fs", final, time.time() - t0)
        return final

    def latest(self) -> Path | None:
        """Newest complete checkpoint, chosen on rank 0 and broadcast so ranks agree."""
        found = complete_checkpoints(self.root) if self.rank == 0 else []
        path = str(found[-1]) if found else None
        path = distributed.broadcast_object(path)
        return Path(path) if path else None

    def load(self, engine: TrainEngine, folder: Path, generators: dict[str, torch.Generator]) -> dict:
        """Restore engine, EMA and RNG from ``folder``; returns the saved train state, with this rank's data
        position under ``"data_stream"`` (None when the checkpoint has none for this rank)."""
        folder = Path(folder)
        if not (folder / MARKER).is_file():
            raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {MARKER}); "
                                    "set checkpoint.resume to a complete one or to auto")
        client = engine.load(str(folder.parent), folder.name)
        ema_file = folder / f"ema_rank{self.rank if _ema_sharded(engine) else 0:05d}.pt"
        engine.ema.load_state_dict(torch.load(ema_file, map_location="cpu", weights_only=False))
        rng_file = folder / f"rng_rank{self.rank:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False), generators)
        else:
            logger.warning("no RNG state for rank %d in %s (world size changed?): RNG streams restart",
                           self.rank, folder)
        data_path = folder / data_file(self.rank)
        data_stream = json.loads(data_path.read_text()) if data_path.is_file() else None
        return {**client.get("vosr", {}), "data_stream": data_stream}

    def _prune(self) -> None:
        for old in complete_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("pruned old checkpoint %s", old)


def _summary(state: dict) -> dict:
    return {k: v for k, v in state.get("train", {}).items() if isinstance(v, (int, float, str))}


def _ema_sharded(engine: TrainEngine) -> bool:
    """Each rank's EMA differs (ZeRO-3, or the flat fp32 master EMA of bf16 mode): one EMA file per rank."""
    return bool(getattr(engine.ema, "sharded", False)) or is_zero3_partitioned(engine.module)
