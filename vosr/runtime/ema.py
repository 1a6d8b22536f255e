"""Exponential moving average of the trained weights, in fp32, correct under every ZeRO stage.

Under ZeRO-3 each rank holds only its partition of every parameter (``param.ds_tensor``); the
EMA then tracks exactly that partition, so its memory is sharded like the model's. Full
weights are gathered (collectively) only to export or validate.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

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

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [_local(p).detach().float().clone() for p in self.params]
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        """min(decay, (1 + n) / (10 + n)) with warm-up, as in timm's ModelEmaV2 / TF's EMA."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        current = [_local(p).float() for p in self.params]
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
        """Full EMA tensors from every rank's ZeRO-3 partitions (collective), plus the module's buffers.

        ZeRO-3 cuts each flattened parameter into equal contiguous partitions, one per rank, the
        last padded; the EMA shadows have exactly that layout, so one all-gather of the
        concatenated shadows rebuilds every tensor. (Swapping the shadows into the parameters and
        gathering those would miss the parameters ZeRO-3 keeps whole on every rank, the small
        "persistent" ones: their export would be the raw weights, not the EMA.)
        """
        import torch.distributed as dist

        params = dict(module.named_parameters())
        local = torch.cat([ema_of[n].flatten() for n in self.names])  # this rank's partitions, in order
        if dst is not None:
            if dist.get_rank() != dst:
                dist.gather(local, None, dst=dst)
                return {}
            pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.gather(local, pieces, dst=dst)
        else:
            pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(pieces, local)
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name in self.names:
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

    def copy_to(self, target: nn.Module, source: nn.Module) -> None:
        """Load the gathered EMA weights of ``source`` into a plain module ``target`` (collective)."""
        target.load_state_dict(self.full_state_dict(source))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(zip(self.names, self.shadow))
