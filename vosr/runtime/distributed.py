"""Rank and world information from torchrun, Slurm or submitit, and the few collectives the loop needs.

This module, the engine and the checkpointer are the only places that touch ``torch.distributed``.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_PORT_BASE = 20000  # MASTER_PORT = base + job id % 20000 when the launcher set none


@dataclass(frozen=True, kw_only=True)
class WorldInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str
    """Which launcher the values came from: torchrun, slurm or single."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[01-03,7],login1`` into host names."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            hosts.extend(f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1))
    return hosts


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_info_from_env(env: Mapping[str, str] | None = None) -> WorldInfo:
    """Read rank/world from torchrun (or submitit's export), else Slurm ``srun`` tasks, else one process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                         local_rank=int(env.get("LOCAL_RANK", 0)),
                         master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                         master_port=int(env.get("MASTER_PORT", 29500)), source="torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        hosts = expand_nodelist(nodelist) or ["127.0.0.1"]
        port = int(env.get("MASTER_PORT", DEFAULT_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return WorldInfo(rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
                         local_rank=int(env.get("SLURM_LOCALID", 0)),
                         master_addr=env.get("MASTER_ADDR", hosts[0]), master_port=port, source="slurm")
    # A lone process gets a free port, so several of them (tests, benchmarks) never collide on a default.
    return WorldInfo(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1",
                     master_port=int(env.get("MASTER_PORT", 0)) or free_port(), source="single")


def resolve_device(name: str) -> str:
    """A CLI's ``--device``: ``auto`` -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def select_device(info: WorldInfo) -> torch.device:
    """The accelerator of this local rank, or the CPU."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_SAVED_ENV: dict[str, str | None] = {}
"""Rendezvous variables as they were before ``init_distributed`` set them (restored by ``destroy``)."""


def init_distributed(info: WorldInfo, backend: str = "auto", timeout_min: int = 30) -> None:
    """Create the process group (DeepSpeed's, so its comm layer knows it) for any world size."""
    import deepspeed

    for key, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank),
                       ("MASTER_ADDR", info.master_addr), ("MASTER_PORT", info.master_port)):
        _SAVED_ENV.setdefault(key, os.environ.get(key))
        os.environ[key] = str(value)
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu" else "gloo"
    if backend == "gloo":
        # DeepSpeed would JIT-compile its CPU shared-memory op here (1-2 min, silent, again whenever its
        # cache is cleared); it only serves inference_all_reduce, which training never calls.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    logger.info("rank %d/%d (local %d) via %s, master %s:%d, backend %s", info.rank, info.world_size,
                info.local_rank, info.source, info.master_addr, info.master_port, backend)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def destroy() -> None:
    """Tear the process group down explicitly (avoids aborts at interpreter shutdown).

    Through DeepSpeed's comm layer, so it also drops its cached groups, and with the rendezvous
    variables ``init_distributed`` set put back: a second run in the same process (tests, a
    notebook) starts from a clean slate instead of a stale group or port.
    """
    if is_initialized():
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    for key, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _SAVED_ENV.clear()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over ranks (identity on one process)."""
    if not values or not is_initialized():
        return dict(values)
    keys = sorted(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    buf /= dist.get_world_size()
    return dict(zip(keys, buf.tolist()))


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum of each scalar over ranks."""
    if not values or not is_initialized():
        return dict(values)
    keys = sorted(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return dict(zip(keys, buf.tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (so all ranks take the same branch)."""
    if not is_initialized():
        return flag
    buf = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item() > 0)


def all_gather_object(obj: object) -> list[object]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` on one process)."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank (so ranks cannot disagree, e.g. on a path)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
