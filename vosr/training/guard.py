"""What keeps a run folder consistent: the run lock, the config identity checked on resume, and the
clean-up of what a killed run left behind (temp files of exports and checkpoints).

Nothing here imports torch; the functions run on rank 0 (the caller broadcasts the outcome).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_NAME = ".vosr.lock"
"""The run folder's lock file: json with host, pid, job id and start time of the run that owns it."""


class RunError(Exception):
    """A run cannot start or go on for a reason the user must act on; the message is one line (exit 2)."""


class RunLockError(RunError):
    """The run folder is owned by another live run."""


class ConfigMismatchError(RunError):
    """The config of a resumed run differs from the checkpoint's in seed, model or data."""


def job_id(env: dict[str, str] | None = None) -> str | None:
    """The scheduler's job id (requeues of a Slurm job keep it), or None outside a scheduler."""
    env = os.environ if env is None else env
    array = env.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID") or env.get("TORCHELASTIC_RUN_ID") or None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), so a reused pid is not taken for
    the lock's owner; None where ``/proc`` is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive ownership of one run folder, taken atomically (``O_CREAT | O_EXCL``).

    A lock left by a dead process on this host is stale and taken over; so is one left by an
    earlier attempt of the same scheduler job (a requeue, possibly on another node). Any other
    holder makes :meth:`acquire` raise ``RunLockError`` naming it and how to break the lock.
    """

    path: Path
    held: bool
    took_over: str | None
    """Set when a stale lock was taken over: what it said (the caller logs it once logging is set up)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self.took_over = None

    def owner(self) -> dict[str, Any]:
        """What the lock file says (empty when unreadable: a lock being written, or a torn one)."""
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
              "job_id": job_id(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if not self._stale(owner, me):
                    raise RunLockError(self._message(owner)) from None
                self.took_over = f"took over the lock {self.path} of a run that is gone ({_describe(owner)})"
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise RunLockError(f"run folder {self.path.parent} is locked by {_describe(self.owner())} "
                           f"(the lock changed hands while starting); remove {self.path} if no run uses it")

    def release(self) -> None:
        if self.held:
            if self.owner().get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def _stale(self, owner: dict[str, Any], me: dict[str, Any]) -> bool:
        if not owner:  # unreadable: give a writer a moment, then treat a still-empty file as torn
            time.sleep(0.2)
            owner = self.owner()
            if not owner:
                return self.path.exists() and time.time() - self.path.stat().st_mtime > 5
        if owner.get("job_id") and owner.get("job_id") == me["job_id"] and owner.get("pid") != me["pid"]:
            return True  # an earlier attempt of this job (a requeue): it is gone by construction
        if owner.get("host") == me["host"]:
            pid = owner.get("pid")
            if not isinstance(pid, int) or pid == me["pid"] or not _alive(pid):
                return True
            recorded = owner.get("pid_start")
            return recorded is not None and _start_time(pid) not in (None, recorded)  # the pid was reused
        return False

    def _message(self, owner: dict[str, Any]) -> str:
        here = owner.get("host") == socket.gethostname()
        how = ("stop that run first" if here else
               f"if that run is gone (its node died), delete {self.path} and rerun")
        return f"run folder {self.path.parent} is in use by {_describe(owner)}; {how}, or choose another run_dir"


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "another run (unreadable lock file)"
    job = f", job {owner['job_id']}" if owner.get("job_id") else ""
    started = owner.get("started")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}{when}"


def config_identity(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """What must not change when a run resumes: its stage, seed, model and data (a ``to_dict`` config)."""
    model = {k: v for k, v in cfg_dict.get("model", {}).items() if k not in ("compile", "grad_checkpointing")}
    data = cfg_dict.get("data", {})
    return {"stage": cfg_dict.get("stage"), "seed": cfg_dict.get("seed"), "model": model,
            "data": {k: data.get(k) for k in ("train", "mix_file", "crop_size", "scale")}}


def identity_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities, as ``key: saved -> now``."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def check_identity(saved: dict[str, Any] | None, now: dict[str, Any], folder: Path, allow: bool) -> None:
    """Refuse to resume ``folder`` with a different seed/model/data unless ``allow``; warn when allowed."""
    if saved is None:
        return
    changes = identity_changes(saved, now)
    if not changes:
        return
    if allow:
        logger.warning("resuming %s with a changed config (checkpoint.allow_config_change=true): %s", folder,
                       "; ".join(changes))
        return
    raise ConfigMismatchError(
        f"checkpoint.resume: {folder} was written with another config ({'; '.join(changes[:3])}"
        f"{'; ...' if len(changes) > 3 else ''}); use another run_dir, or set checkpoint.allow_config_change=true")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete what a killed run left behind: temp files of exports (``.NAME.tmp-PID``) and partial
    checkpoints (``checkpoints/.tmp``). Only with the run lock held."""
    removed = []
    for path in run_dir.glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        removed.append(path)
    tmp = run_dir / "checkpoints" / ".tmp"
    for partial in sorted(tmp.glob("step_*")) if tmp.is_dir() else []:  # (DeepSpeed's helper scripts stay)
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    for path in removed:
        logger.warning("removed %s, left by a run that was killed", path)
    return removed
