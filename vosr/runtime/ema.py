"""Exponential moving average of the trained weights, in fp32, correct under every ZeRO stage.

Under ZeRO-3 each rank holds only its partition of every parameter (``param.ds_tensor``); the
EMA then tracks exactly that partition, so its memory is sharded like the model's. Full
weights are gathered (collectively) only to export or validate.

In DeepSpeed's bf16 mode (``engine.precision=bf16``) the module's parameters are bf16 copies;
the EMA follows DeepSpeed's fp32 master weights instead, never the rounded bf16 copies: under
ZeRO-3 through ``source`` (each parameter's local fp32 partition, same layout as
``ds_tensor``), under ZeRO-1/2 with ``FlatMasterEMA``, which shadows the optimizer's flat fp32
partitions (so that EMA is sharded too, 4 bytes x parameters / world size per rank).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _local(param: nn.Parameter) -> torch.Tensor:
    """The part of ``param`` this rank owns: the ZeRO-3 partition, or the whole tensor."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


def is_zero3_partitioned(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


class EMA:
    """fp32 shadow of every trainable parameter's local shard; ``update`` after each optimizer step."""

    names: list[str]
    params: list[nn.Parameter]
    shadow: list[torch.Tensor]
    decay: float
    warmup: bool
    num_updates: int

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True,
                 source: Callable[[list[nn.Parameter]], list[torch.Tensor]] | None = None) -> None:
        """``source(params)``: the fp32 tensors to track in place of each parameter's local data (DeepSpeed's
        ZeRO-3 fp32 master partitions in bf16 mode); asked anew at every update, as a resume may move them."""
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.source = source
        self.shadow = [t.detach().float().clone() for t in self._current()]
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.sharded = is_zero3_partitioned(module)
        """Each rank holds a different part (saved per rank in checkpoints)."""

    def _current(self) -> list[torch.Tensor]:
        if self.source is not None:
            return list(self.source(self.params))
        return [_local(p) for p in self.params]

    def current_decay(self) -> float:
        """min(decay, (1 + n) / (10 + n)) with warm-up, as in timm's ModelEmaV2 / TF's EMA."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        current = [t.float() for t in self._current()]
        torch._foreach_lerp_(self.shadow, current, 1.0 - decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"names": list(self.names), "shadow": [s.cpu() for s in self.shadow],
                "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names:
            missing = sorted(set(self.names) ^ set(state["names"]))[:5]
            raise ValueError(f"EMA checkpoint does not match the model (differing parameters: {missing})")
        for s, saved in zip(self.shadow, state["shadow"]):
            if s.shape != saved.shape:
                raise ValueError(f"EMA shard shape {tuple(saved.shape)} != {tuple(s.shape)}: was the checkpoint "
                                 "written with another world size or ZeRO stage? Export and re-import instead")
            s.copy_(saved)
        self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def full_state_dict(self, module: nn.Module, dst: int | None = None) -> dict[str, torch.Tensor]:
        """The EMA weights (plus the module's buffers) as one CPU state dict; collective under ZeRO-3.

        ``dst``: under ZeRO-3, gather the partitions to that rank only (the others return ``{}`` and
        hold no full copy); None gathers everywhere.
        """
        ema_of = dict(zip(self.names, self.shadow))
        if not is_zero3_partitioned(module):
            out = {}
            for key, value in module.state_dict().items():
                src = ema_of.get(key)
                out[key] = (src.view_as(value) if src is not None else value).detach().float().cpu().clone()
            return out
        return self._gather_zero3(module, ema_of, dst)

    def _gather_zero3(self, module: nn.Module, ema_of: dict[str, torch.Tensor],
                      dst: int | None = None) -> dict[str, torch.Tensor]:
        return gather_zero3(module, self.names, ema_of, dst)

    def copy_to(self, target: nn.Module, source: nn.Module) -> None:
        """Load the gathered EMA weights of ``source`` into a plain module ``target`` (collective)."""
        target.load_state_dict(self.full_state_dict(source))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(zip(self.names, self.shadow))


def gather_zero3(module: nn.Module, names: list[str], ema_of: dict[str, torch.Tensor],
                 dst: int | None = None) -> dict[str, torch.Tensor]:
    """Full EMA tensors from every rank's ZeRO-3 partitions (collective), plus the module's buffers.

    ZeRO-3 cuts each flattened parameter into equal contiguous partitions, one per rank, the
    last padded; the EMA shadows have exactly that layout, so one all-gather of the
    concatenated shadows rebuilds every tensor. (Swapping the shadows into the parameters and
    gathering those would miss the parameters ZeRO-3 keeps whole on every rank, the small
    "persistent" ones: their export would be the raw weights, not the EMA.)
    """
    import torch.distributed as dist

    params = dict(module.named_parameters())
    local = torch.cat([ema_of[n].flatten() for n in names])  # this rank's partitions, in order
    if dst is not None and dist.get_rank() != dst:  # only ``dst`` holds the full copy
        dist.gather(local, None, dst=dst)
        return {}
    pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    if dst is None:
        dist.all_gather(pieces, local)
    else:
        dist.gather(local, pieces, dst=dst)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name in names:
        n, param = ema_of[name].numel(), params[name]
        full = torch.cat([piece[offset:offset + n] for piece in pieces])[:param.ds_numel]
        out[name] = full.view(param.ds_shape).float().cpu().clone()
        offset += n
    for key, value in module.state_dict().items():  # buffers (RoPE tables) are not partitioned
        if key not in out:
            if key in params:
                raise ValueError(f"parameter {key} is not tracked by the EMA (frozen under ZeRO-3?)")
            out[key] = value.detach().float().cpu().clone()
    return out


def _buffers(module: nn.Module, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the module's buffers (and complain about untracked parameters) to ``out``."""
    params = dict(module.named_parameters())
    for key, value in module.state_dict().items():
        if key not in out:
            if key in params:
                raise ValueError(f"parameter {key} is not tracked by the EMA (frozen?)")
            out[key] = value.detach().float().cpu().clone()
    return out


def flat_layout(module: nn.Module, optimizer) -> list[list[tuple[str, int, torch.Size]]]:
    """Per optimizer group of DeepSpeed's ZeRO-1/2 optimizer: (name, offset in the group's flat buffer, shape) of
    each parameter, in the flat order (``round_robin_bit16_groups`` / ``round_robin_bit16_offsets``)."""
    name_of = {id(p): n for n, p in module.named_parameters()}
    return [[(name_of[id(p)], int(off), p.shape) for p, off in zip(group, offsets)]
            for group, offsets in zip(optimizer.round_robin_bit16_groups, optimizer.round_robin_bit16_offsets)]


def gather_flat(module: nn.Module, layout: list[list[tuple[str, int, torch.Size]]],
                partitions: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full fp32 tensors from every rank's flat partitions of ZeRO-1/2 (collective), plus the module's buffers.

    Each group's flat buffer is cut into equal contiguous partitions, one per rank, in rank order; one
    all-gather per group rebuilds it, and each parameter is its (offset, numel) slice.
    """
    import torch.distributed as dist

    out: dict[str, torch.Tensor] = {}
    for group, part in zip(layout, partitions):
        part = part.detach().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            pieces = [torch.empty_like(part) for _ in range(dist.get_world_size())]
            dist.all_gather(pieces, part)
            flat = torch.cat(pieces)
        else:
            flat = part
        for name, offset, shape in group:
            n = shape.numel()
            out[name] = flat[offset:offset + n].view(shape).cpu().clone()
    return _buffers(module, out)


class FlatMasterEMA:
    """fp32 EMA of DeepSpeed's ZeRO-1/2 fp32 master partitions (bf16 mode): one flat shadow per optimizer group.

    Each rank tracks the partition of the flat master weights its optimizer updates, so the EMA is
    sharded like the optimizer state; ``full_state_dict`` gathers it (collectively). Same interface as
    ``EMA`` (``update``, ``state_dict``, ``load_state_dict``, ``full_state_dict``).
    """

    def __init__(self, module: nn.Module, optimizer, decay: float, warmup: bool = True) -> None:
        self.optimizer = optimizer
        self.layout = flat_layout(module, optimizer)
        self.names = [name for group in self.layout for name, _, _ in group]
        self.shadow = [t.detach().float().clone() for t in self._current()]
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.sharded = True

    def _current(self) -> list[torch.Tensor]:
        return list(self.optimizer.single_partition_of_fp32_groups)

    current_decay = EMA.current_decay

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        torch._foreach_lerp_(self.shadow, [t.float() for t in self._current()], 1.0 - decay)
        self.num_updates += 1

    state_dict = EMA.state_dict
    load_state_dict = EMA.load_state_dict

    @torch.no_grad()
    def full_state_dict(self, module: nn.Module, dst: int | None = None) -> dict[str, torch.Tensor]:
        """The EMA weights (plus the module's buffers) as one CPU state dict; collective. ``dst``: only that
        rank keeps the result (the others return ``{}``)."""
        import torch.distributed as dist

        full = gather_flat(module, self.layout, self.shadow)
        if dst is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != dst:
            return {}
        return full

    def copy_to(self, target: nn.Module, source: nn.Module) -> None:
        target.load_state_dict(self.full_state_dict(source))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(zip((f"flat_group{i}" for i in range(len(self.shadow))), self.shadow))
