"""A per-rank memory model of a DeepSpeed ZeRO run, and a meter of the measured peak.

Pure functions of numbers: the engine knows nothing about super-resolution, so the caller gives
the parameter counts and the activation bytes (``transformer_activation_bytes`` takes the token
count, width, depth, micro-batch and activation checkpointing of a pre-norm transformer).
What is counted per rank, for ZeRO stage Z over W data-parallel ranks and P trainable parameters
(DeepSpeed 0.19, the bucket sizes of ``vosr.runtime.engine.build_ds_config``):

==============  ==========================================  =========================================
part            fp32 / bf16_autocast (fp32 params)          bf16 (DeepSpeed's bf16 mode)
==============  ==========================================  =========================================
parameters      4P (Z3: 4P/W)                               2P (Z3: 2P/W)
fp32 master     4P/W for Z>=1 (DeepSpeed clones a partition) 4P/W
gradients       Z0: 4P; Z1: 4P + 4P/W; Z2/3: 4P/W + 4P/W    Z1: 2P + 4P/W; Z2/3: 2P/W + 4P/W
                (+4P/W: the flat fp32 copy DeepSpeed steps on)
grad buckets    Z2: 2 x bucket x 4 (double buffer); Z3: 1   same with 2 bytes
AdamW           12P/W (Z0: 12P): m, v and one temporary     12P/W
                of torch's foreach step
EMA (fp32)      4P (Z3: 4P/W)                               4P/W (it shadows the fp32 master partitions)
==============  ==========================================  =========================================

Plus the frozen parts' weights (encoders, a distillation teacher) and the activations kept for
backward. On the CPU memory counts when written (``resident=True``): a 5e8-element bucket that a
small model fills only partly costs what it fills. The fp32 gradient copy and the AdamW temporary were
confirmed with a probe of a 16.8M-parameter MLP (negligible activations) at world size 1: what the first
step allocated was 5.9 x 4P bytes at ZeRO-2 (6.0 predicted) and 6.8 x 4P at ZeRO-3 (6.0 predicted: stage 3
holds more than is listed here, e.g. gathered parameters).
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, fields

import torch

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    """Predicted bytes per rank, by part."""

    params: float
    master: float
    grads: float
    grad_buckets: float
    optimizer: float
    ema: float
    frozen: float
    activations: float
    other: float = 0.0
    """Host-side extras the caller knows of (validation copy, in-process shuffle buffer)."""

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def allocated_by_steps(self, optimizer_state_exists: bool = False) -> float:
        """What the first optimizer step allocates (activations, gradients, buckets, AdamW state unless loaded)."""
        return self.activations + self.grads + self.grad_buckets + (0.0 if optimizer_state_exists else self.optimizer)

    def as_dict(self) -> dict[str, float]:
        return {**{f.name: float(getattr(self, f.name)) for f in fields(self)}, "total": self.total}

    def describe(self, unit: float = GIB, unit_name: str = "GiB") -> str:
        """One line: each part and the total."""
        parts = " ".join(f"{k}={v / unit:.3g}" for k, v in self.as_dict().items() if k != "total")
        return f"{parts} -> total {self.total / unit:.3g} {unit_name}"


def state_bytes(*, trainable: int, zero_stage: int, world_size: int, precision: str, bucket_elems: int = int(5e8),
                resident: bool = False) -> dict[str, float]:
    """Bytes per rank of the trained parameters, master copy, gradients, buckets, AdamW state and EMA."""
    p, w, z = float(trainable), float(max(world_size, 1)), zero_stage
    bf16 = precision == "bf16"
    pb = 2.0 if bf16 else 4.0  # parameter and gradient bytes
    params = pb * p / (w if z == 3 else 1)
    master = 4 * p / w if z >= 1 else 0.0
    # DeepSpeed's optimizer steps on a flat fp32 copy of this rank's gradient partition (ZeRO >= 1, any precision)
    if z == 0:
        grads = pb * p
    elif z == 1:
        grads = pb * p + 4 * p / w
    else:
        grads = pb * p / w + 4 * p / w
    n_buckets = {2: 2, 3: 1}.get(z, 0)  # ZeRO-2: double buffer (overlap_comm); ZeRO-3: one
    elems = n_buckets * float(bucket_elems)
    grad_buckets = (min(elems, p) if resident else elems) * pb  # resident: only what the gradients fill
    optimizer = 12 * p / (w if z >= 1 else 1)  # AdamW m, v, and the foreach step's one full-size temporary
    ema = 4 * p / (w if z == 3 or (bf16 and z >= 1) else 1)
    return {"params": params, "master": master, "grads": grads, "grad_buckets": grad_buckets, "optimizer": optimizer,
            "ema": ema}


def transformer_activation_bytes(*, tokens: int, width: int, depth: int, micro_batch: int, ffn_hidden: int,
                                 cross_tokens: int = 0, checkpointing: bool = False, act_bytes: float = 4.0,
                                 extra_elems_per_sample: int = 0, graphs: int = 1) -> float:
    """Bytes kept for backward by ``graphs`` forward passes of a pre-norm transformer (eager autograd).

    Per block and sample, counted from the tensors autograd saves in an adaLN block (N tokens, width D):
    RMSNorm + modulate + residual 4 N D, self-attention 10 N D (qkv 3, q/k norms 2, RoPE'd q/k 2, SDPA
    output and its reshape 2, projection 1; flash SDPA keeps no N^2 matrix), cross-attention 6 N D + 4 M D
    (M = cross_tokens: keys, their norm, values), SwiGLU 5 N D + 4 N H: 25 N D + 4 N H + 4 M D (20 N D + 4 N H
    without cross-attention). One more block's worth is live while the last block runs backward. With
    checkpointing only each block's input (N D) stays, plus one block recomputed.
    ``extra_elems_per_sample``: the embedding, head and loss tensors (latent-sized), given by the caller.
    ``act_bytes``: 4 in fp32; about 2.7 under bf16 autocast (norm internals stay fp32; an estimate).
    """
    n, d, h, m = tokens, width, ffn_hidden, cross_tokens
    per_block = 25 * n * d + 4 * n * h + (4 * m * d if m else -5 * n * d)
    kept = depth * n * d + per_block if checkpointing else depth * per_block
    kept += per_block  # the backward of the last block: its gradients beside everything saved
    return float(graphs * micro_batch * (kept + extra_elems_per_sample) * act_bytes)


def plan_memory(*, trainable: int, frozen_bytes: float, activation_bytes: float, zero_stage: int, world_size: int,
                precision: str, resident: bool = False, other_bytes: float = 0.0,
                bucket_elems: int = int(5e8)) -> MemoryPlan:
    """The per-rank ``MemoryPlan`` of one configuration."""
    state = state_bytes(trainable=trainable, zero_stage=zero_stage, world_size=world_size, precision=precision,
                        bucket_elems=bucket_elems, resident=resident)
    return MemoryPlan(**state, frozen=float(frozen_bytes), activations=float(activation_bytes),
                      other=float(other_bytes))


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Return glibc's free heap memory to the system (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak memory of this process: on CUDA ``max_memory_allocated``; on the CPU the peak resident set (VmHWM,
    reset through ``/proc/self/clear_refs``; else ``ru_maxrss``, which cannot be reset), so the CPU figures
    include whatever else the process allocates (library imports, kernel caches).

    ``start`` sets the baseline of ``peak`` (everything since); ``mark`` starts a segment whose own peak increase
    ``since_mark`` gives (e.g. the first training steps, after every import and initialisation).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0.0
        self.mark_level = 0.0
        self.peak_before_mark = 0.0
        self.resettable = device.type == "cuda"
        self.method = "CUDA max_memory_allocated" if device.type == "cuda" else ""

    def _level(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.memory_allocated(self.device))
        rss = _status_kib("VmRSS")
        return float(rss * 1024) if rss is not None else self._high()

    def _high(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        hwm = _status_kib("VmHWM")
        if hwm is None:
            return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return float(hwm * 1024)

    def _reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _malloc_trim()  # freed heap the allocator still holds would be reused unseen: give it back first
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.resettable = True
            self.method = "peak RSS increase (VmHWM)"
        except OSError:
            self.method = "peak RSS increase (ru_maxrss, not resettable: includes earlier peaks)"

    def start(self) -> PeakMeter:
        self._reset()
        self.baseline = self.mark_level = self._level()
        return self

    def mark(self) -> None:
        self.peak_before_mark = max(self.peak_before_mark, self._high())
        self._reset()
        self.mark_level = self._level()

    def peak(self) -> float:
        """Bytes: the peak since ``start`` minus the level at ``start``."""
        return max(self.peak_before_mark, self._high()) - self.baseline

    def since_mark(self) -> float:
        """Bytes: the peak since ``mark`` minus the level at ``mark``."""
        return self._high() - self.mark_level
