"""Atomic, resumable checkpoints: DeepSpeed shards + EMA + RNG + train/data state + config.

Layout of ``<run_dir>/checkpoints/step_00001000/``: DeepSpeed's files (model/optimizer shards,
scheduler, client state), ``ema_rank*.pt`` (the EMA shard of each rank under ZeRO-3, else rank 0
only), ``rng_rank*.pt`` (python, numpy, torch, cuda and the run's own generators),
``data_rank*.json`` (the data stream's position on each rank, plain json) and ``complete.json``
written last. Everything is written under ``.tmp/``, fsynced, and the folder is renamed
into place, so a checkpoint either exists complete or not at all.

``complete.json`` holds the step, the train summary, the run's config identity (seed, model,
data: checked on resume, see ``vosr.training.guard``) and the size and sha256 of every file.
``latest`` verifies the newest checkpoint against it and falls back to the previous complete
one, naming the bad file. Every ``.pt`` is read back weights-only (``vosr.runtime.safeload``),
DeepSpeed's own files included.
"""
from __future__ import annotations

import hashlib
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
from vosr.runtime.safeload import (
    CheckpointError,
    CheckpointWriteError,
    fsync_dir,
    fsync_file,
    named_writes,
    safe_load,
    safe_save,
    weights_only_loads,
    write_error,
)

logger = logging.getLogger(__name__)

MARKER = "complete.json"
LEGACY_RNG_GLOBALS = [np.dtype, np.ndarray, (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct]
"""numpy's array pickle, for RNG files written before ``rng_state`` stored the numpy key as a tensor."""
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
    """Every RNG this rank uses, for bit-exact resume (tensors and numbers only: it is read weights-only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, list):  # written by rng_state: the key array as an int64 tensor
        name, keys, pos, has_gauss, cached = numpy_state
        numpy_state = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(numpy_state)
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
        folder = tmp_root / name
        error = None
        try:
            with named_writes():
                engine.save(str(tmp_root), name, client_state={"vosr": state})
                if self.rank == 0 or _ema_sharded(engine):
                    safe_save(engine.ema.state_dict(), folder / f"ema_rank{self.rank:05d}.pt")
                safe_save(rng_state(generators), folder / f"rng_rank{self.rank:05d}.pt")
            if data_state is not None:
                path = folder / data_file(self.rank)
                try:
                    path.write_text(json.dumps(data_state))
                except OSError as err:
                    raise write_error(path, err) from err
        except CheckpointWriteError as err:
            error = str(err)
        self._raise_if_any(error, folder)
        manifest, error = {}, None
        try:  # every rank fsyncs and hashes its share of the files (they are on a shared file system)
            manifest = file_manifest(folder, self.rank, _world_size())
        except OSError as err:
            error = str(write_error(folder, err))
        self._raise_if_any(error, folder)
        files = {k: v for part in distributed.all_gather_object(manifest) for k, v in part.items()}
        final = self.root / name
        if self.rank == 0:
            marker = folder / MARKER
            try:
                marker.write_text(json.dumps({"step": step, "time": time.time(), **_summary(state),
                                              "identity": state.get("identity"), "files": files}))
                fsync_file(marker)
                fsync_dir(folder)
            except OSError as err:
                shutil.rmtree(folder, ignore_errors=True)
                raise write_error(marker, err) from err
            if final.exists():  # a save of this step survived from an earlier life of the run
                shutil.rmtree(final)
            os.replace(folder, final)
            fsync_dir(self.root)
            fsync_dir(tmp_root)
            self._prune()
        distributed.barrier()
        logger.info("saved checkpoint %s in %.1fs", final, time.time() - t0)
        return final

    def _raise_if_any(self, error: str | None, folder: Path) -> None:
        """Collective: when a rank failed to write, remove the partial folder and raise on every rank."""
        errors = [e for e in distributed.all_gather_object(error) if e]
        if not errors:
            return
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointWriteError(error or errors[0])

    def latest(self) -> Path | None:
        """Newest complete checkpoint whose files match ``complete.json`` (sizes and checksums), agreed by all
        ranks; a bad one is skipped with a warning naming the file, and the previous complete one is used."""
        found = complete_checkpoints(self.root) if self.rank == 0 else []
        candidates = [str(p) for p in found]
        candidates = distributed.broadcast_object(candidates)
        world = _world_size()
        for path in reversed(candidates):
            problem = verify_checkpoint(Path(path), self.rank, world)
            problems = [p for p in distributed.all_gather_object(problem) if p]
            if not problems:
                return Path(path)
            if self.rank == 0:
                logger.warning("checkpoint %s is damaged (%s): falling back to the previous complete one",
                               path, problems[0])
                # Out of the way (kept for inspection): a later save of that step, or pruning, must not trip on it.
                damaged = Path(path).with_name(Path(path).name + ".damaged")
                shutil.rmtree(damaged, ignore_errors=True)
                os.replace(path, damaged)
            distributed.barrier()
        return None

    def load(self, engine: TrainEngine, folder: Path, generators: dict[str, torch.Generator]) -> dict:
        """Restore engine, EMA and RNG from ``folder``; returns the saved train state, with this rank's data
        position under ``"data_stream"`` (None when the checkpoint has none for this rank)."""
        folder = Path(folder)
        if not (folder / MARKER).is_file():
            raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {MARKER}); "
                                    "set checkpoint.resume to a complete one or to auto")
        problems = [p for p in distributed.all_gather_object(verify_checkpoint(folder, self.rank, _world_size())) if p]
        if problems:  # latest() has verified already; this catches a checkpoint.resume named explicitly
            raise CheckpointError(f"checkpoint.resume: {problems[0]}; name another checkpoint, or use auto")
        with weights_only_loads():  # DeepSpeed's own torch.load calls too: no code runs from a checkpoint
            client = engine.load(str(folder.parent), folder.name)
        ema_file = folder / f"ema_rank{self.rank if _ema_sharded(engine) else 0:05d}.pt"
        engine.ema.load_state_dict(safe_load(ema_file))
        rng_file = folder / f"rng_rank{self.rank:05d}.pt"
        if rng_file.is_file():
            with torch.serialization.safe_globals(LEGACY_RNG_GLOBALS):
                set_rng_state(safe_load(rng_file), generators)
        else:
            logger.warning("no RNG state for rank %d in %s (world size changed?): RNG streams restart",
                           self.rank, folder)
        data_path = folder / data_file(self.rank)
        try:
            data_stream = json.loads(data_path.read_text()) if data_path.is_file() else None
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{data_path} is unreadable ({err})") from err
        return {**client.get("vosr", {}), "data_stream": data_stream}

    def _prune(self) -> None:
        for old in complete_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("pruned old checkpoint %s", old)


def _world_size() -> int:
    return torch.distributed.get_world_size() if distributed.is_initialized() else 1


def _share(names: list[str], rank: int, world: int) -> list[str]:
    return sorted(names)[rank::max(world, 1)]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path, rank: int, world: int) -> dict[str, dict[str, Any]]:
    """fsync this rank's share of ``folder``'s files and return their sizes and sha256 (by relative name)."""
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER]
    out = {}
    for name in _share(names, rank, world):
        path = folder / name
        fsync_file(path)
        out[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    if rank == 0:
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            fsync_dir(sub)
    return out


def verify_checkpoint(folder: Path, rank: int = 0, world: int = 1) -> str | None:
    """None when this rank's share of ``folder``'s files matches ``complete.json``, else what is wrong (naming
    the file). A checkpoint written before manifests existed is only checked for empty files."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as err:
        return f"{folder / MARKER} is unreadable ({err})"
    files = marker.get("files")
    if files is None:
        for path in sorted(folder.rglob("*.pt")):
            if path.stat().st_size == 0:
                return f"{path} is empty"
        return None
    for name in _share(list(files), rank, world):
        path, want = folder / name, files[name]
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path} has {size} bytes, {want['size']} were written"
        if sha256_file(path) != want["sha256"]:
            return f"{path} does not match its checksum"
    return None


def checkpoint_identity(folder: Path) -> dict | None:
    """The config identity recorded in ``folder``'s ``complete.json`` (None when absent)."""
    try:
        return json.loads((folder / MARKER).read_text()).get("identity")
    except (OSError, ValueError):
        return None


def _summary(state: dict) -> dict:
    return {k: v for k, v in state.get("train", {}).items() if isinstance(v, (int, float, str))}


def _ema_sharded(engine: TrainEngine) -> bool:
    """Each rank's EMA differs (ZeRO-3, or the flat fp32 master EMA of bf16 mode): one EMA file per rank."""
    return bool(getattr(engine.ema, "sharded", False)) or is_zero3_partitioned(engine.module)
