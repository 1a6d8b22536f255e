"""Reading and writing checkpoint files without running code from them, and naming the file on failure.

Every ``.pt`` file vosr reads is loaded with ``torch.load(weights_only=True)``: the unpickler
then builds only tensors, containers and primitive types, plus the classes allow-listed
below, and a file carrying a pickle payload (``__reduce__`` to ``os.system``, say) fails with
``UnsafeCheckpointError`` naming the file instead of running it.

DeepSpeed reads its own files (``mp_rank_00_model_states.pt``, ``*_optim_states.pt``) through
``torch.load(..., weights_only=False)``; :func:`weights_only_loads` patches ``torch.load`` for the
duration of its collective load so that those calls are weights-only too (and also sets
``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` for any caller holding its own reference to ``torch.load``).

:func:`deepspeed_safe_globals` is exactly what DeepSpeed 0.19 stores in those files besides tensors,
dicts, lists, tuples and numbers, found by saving real checkpoints of ZeRO stages 0-3, with fp32 and
with DeepSpeed's bf16 optimizer (``bf16_zero_pp_rank_*_optim_states.pt``), and listing the pickle's
globals (``torch.serialization.get_unsafe_globals_in_checkpoint``):

* ``deepspeed.runtime.fp16.loss_scaler.LossScaler`` — the (static) loss scaler of the ZeRO optimizer
  state (``loss_scaler``), a plain object of floats;
* ``deepspeed.utils.tensor_fragment.fragment_address`` — the namedtuple in ``param_slice_mappings``
  (ZeRO 1/2) giving each parameter's (numel, start) in the flat partition;
* ``deepspeed.runtime.zero.config.ZeroStageEnum`` — the ``zero_stage`` of the optimizer state;
* ``collections.OrderedDict``, ``torch.Size`` and ``set`` are allowed by ``weights_only`` already.

(fp16 with dynamic loss scaling would add ``DynamicLossScaler``; vosr never trains in fp16.)

Writes go through :func:`named_writes`: a failing ``torch.save`` (DeepSpeed's or ours) is re-raised
naming its path, and a full disk reads "no space left on device while writing PATH".
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""Disk full, quota exceeded, file size limit (``RLIMIT_FSIZE``): all reported as no space left."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds pickled objects outside the weights-only allow-list (possibly code)."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint or export file failed (disk full, I/O error); the message names the file."""


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed pickles into its checkpoint files (see the module docstring)."""
    found: list[Any] = []
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler

        found.append(LossScaler)
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address

        found.append(fragment_address)
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        found.append(ZeroStageEnum)
    return found


_real_torch_load = torch.load
_real_torch_save = torch.save


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises ``CheckpointError`` naming ``path`` on any failure."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return _real_torch_load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} holds pickled objects that are not weights ({_first_line(err)}); refusing to load it, "
            "since unpickling could run code. Delete the checkpoint folder if you did not write it") from err
    except (EOFError, RuntimeError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _patched_load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
                  **kwargs: Any) -> Any:
    """What ``torch.load`` is inside :func:`weights_only_loads`: always weights-only, errors name the file."""
    if not isinstance(f, (str, os.PathLike)):
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return _real_torch_load(f, map_location=map_location, weights_only=True, **kwargs)
    return safe_load(f, map_location=map_location)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within: every ``torch.load`` (DeepSpeed's included) is weights-only and names its file on failure."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.load = _patched_load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = _real_torch_load  # type: ignore[assignment]
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def write_error(path: str | Path, err: BaseException) -> CheckpointWriteError:
    """The one-line error for a failed write of ``path``: "no space left on device" when that is the cause."""
    if no_space(err):
        return CheckpointWriteError(f"no space left on device while writing {path}; free space (or raise the "
                                    "quota) under its folder and rerun: the previous checkpoint is intact")
    return CheckpointWriteError(f"writing {path} failed ({type(err).__name__}: {_first_line(err)})")


def no_space(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a full disk / quota / file-size limit.

    torch's zip writer reports those as ``RuntimeError: [enforce fail at inline_container.cc] ... file write
    failed`` without an errno; a failed write of the writer is treated as one of them.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            return True
        text = str(seen)
        if "No space left" in text or "File too large" in text or "Disk quota" in text or (
                "inline_container" in text and ("write" in text or "unexpected pos" in text)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def safe_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that names ``path`` when it fails (see :func:`write_error`)."""
    try:
        _real_torch_save(obj, path)
    except CheckpointWriteError:
        raise
    except (OSError, RuntimeError) as err:
        raise write_error(path, err) from err


def _patched_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    try:
        _real_torch_save(obj, f, *args, **kwargs)
    except (OSError, RuntimeError) as err:
        raise write_error(f if isinstance(f, (str, os.PathLike)) else "a checkpoint file", err) from err


@contextlib.contextmanager
def named_writes() -> Iterator[None]:
    """Within: a failing ``torch.save`` (DeepSpeed's included) raises ``CheckpointWriteError`` naming its file."""
    torch.save = _patched_save  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.save = _real_torch_save  # type: ignore[assignment]


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new names, renames) to the disk; ignored where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
