"""The DeepSpeed engine around a plain ``nn.Module``: ZeRO config, AdamW, warm-up, EMA, stepping.

The engine knows nothing about super-resolution: it receives a built model and a loss.
Precision (``engine.precision``):

- ``bf16``: DeepSpeed's bf16 mode. The module's parameters and gradients are bf16, so gradient
  reduce-scatters and ZeRO-3 all-gathers move half the bytes of fp32; DeepSpeed keeps the fp32
  master weights, their fp32 gradient partition and the AdamW state, partitioned by ZeRO (stage
  >= 1). The forward runs under bf16 autocast too (inputs are cast, RMSNorm/softmax stay fp32, no
  loss scaling). The EMA and the raw export read the fp32 master weights, never the bf16 copies.
- ``bf16_autocast``: fp32 parameters, gradients and communication; forward and backward under
  ``torch.autocast`` in bf16 (what ``bf16`` meant before).
- ``fp32``: no autocast.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

from vosr.config import EngineConfig, OptimConfig
from vosr.runtime import distributed
from vosr.runtime.distributed import WorldInfo
from vosr.runtime.ema import EMA, FlatMasterEMA, flat_layout, gather_flat, gather_zero3, is_zero3_partitioned

logger = logging.getLogger(__name__)


def build_ds_config(engine: EngineConfig, optim: OptimConfig, micro_batch: int, world_size: int) -> dict:
    """The DeepSpeed JSON config for this run; checks the global batch first."""
    global_batch = micro_batch * optim.grad_accum * world_size
    if engine.global_batch_size is not None and engine.global_batch_size != global_batch:
        raise ValueError(
            f"engine.global_batch_size={engine.global_batch_size} but data.batch_size={micro_batch} x "
            f"optim.grad_accum={optim.grad_accum} x world size {world_size} = {global_batch}; "
            "change optim.grad_accum or data.batch_size")
    zero: dict = {"stage": engine.zero_stage}
    if engine.zero_stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=int(5e8))
    if engine.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False, stage3_param_persistence_threshold=int(1e5))
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": engine.precision == "bf16"},  # DeepSpeed's bf16 mode; see the module docstring
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


PRECISION_NAMES = {"bf16": "DeepSpeed bf16 (bf16 params/grads, fp32 master + optimizer state)",
                   "bf16_autocast": "bf16 autocast over fp32 params/grads", "fp32": "fp32"}


def warmup_constant(warmup_steps: int):
    """LR multiplier: linear warm-up to 1, then constant (the paper's schedule)."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class TrainEngine:
    """DeepSpeed-wrapped model with AdamW, warm-up LR, fp32 EMA and ``backward_step``."""

    world: WorldInfo
    device: torch.device
    ds: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | FlatMasterEMA
    precision: str

    def __init__(self, model: nn.Module, engine_cfg: EngineConfig, optim_cfg: OptimConfig, *, micro_batch: int,
                 world: WorldInfo, device: torch.device) -> None:
        import deepspeed

        self.world, self.device, self.precision = world, device, engine_cfg.precision
        ds_config = build_ds_config(engine_cfg, optim_cfg, micro_batch, world.world_size)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2 or optim_cfg.decay_1d]
        no_decay = [p for p in params if p.ndim < 2 and not optim_cfg.decay_1d]  # norms and biases
        groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                                           fused=device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_constant(optim_cfg.warmup_steps))
        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                                                config=ds_config, dist_init_required=False)
        self.optimizer = self.ds.optimizer
        self.zero_stage = engine_cfg.zero_stage
        self.ema = self._build_ema(optim_cfg)
        logger.info("DeepSpeed ZeRO-%d, %s, global batch %d, EMA decay %g", engine_cfg.zero_stage,
                    PRECISION_NAMES[self.precision], ds_config["train_batch_size"], optim_cfg.ema_decay)

    @property
    def master_weights_separate(self) -> bool:
        """The module holds bf16 copies; the fp32 master weights live in DeepSpeed's optimizer."""
        return self.precision == "bf16"

    def _build_ema(self, optim_cfg: OptimConfig) -> EMA | FlatMasterEMA:
        """The fp32 EMA, following the fp32 master weights (see ``vosr.runtime.ema``)."""
        if not self.master_weights_separate:
            return EMA(self.module, optim_cfg.ema_decay, optim_cfg.ema_warmup)
        if self.zero_stage == 3:
            from deepspeed.utils import safe_get_local_fp32_param

            return EMA(self.module, optim_cfg.ema_decay, optim_cfg.ema_warmup,
                       source=lambda params: [safe_get_local_fp32_param(p) for p in params])
        return FlatMasterEMA(self.module, self.optimizer, optim_cfg.ema_decay, optim_cfg.ema_warmup)

    @property
    def module(self) -> nn.Module:
        """The unwrapped model (its state dict has the model's own keys)."""
        return self.ds.module

    @property
    def global_step(self) -> int:
        return int(self.ds.global_steps)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (bf16 and bf16_autocast)."""
        if self.precision in ("bf16", "bf16_autocast"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_model(self) -> nn.Module:
        """What objectives call: the DeepSpeed engine (which owns ZeRO-3 gathering and hooks)."""
        return self.ds

    def backward_step(self, loss: torch.Tensor) -> bool:
        """Backward one micro-batch and step; returns True when an optimizer step (and EMA update) happened."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.backward(loss)
        self.ds.step()
        if boundary:
            self.ema.update()
        return boundary

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained (non-EMA) weights and buffers as one fp32 CPU state dict; collective under ZeRO-3."""
        module = self.module
        if self.master_weights_separate:
            return self.master_state_dict()
        if not is_zero3_partitioned(module):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def master_state_dict(self) -> dict[str, torch.Tensor]:
        """DeepSpeed's fp32 master weights (bf16 mode) gathered into one CPU state dict, plus buffers; collective."""
        module = self.module
        if self.zero_stage == 3:
            from deepspeed.utils import safe_get_local_fp32_param

            names = [n for n, p in module.named_parameters() if p.requires_grad]
            local = {n: safe_get_local_fp32_param(p) for n, p in module.named_parameters() if p.requires_grad}
            return gather_zero3(module, names, local)
        return gather_flat(module, flat_layout(module, self.optimizer),
                           list(self.optimizer.single_partition_of_fp32_groups))

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, save_dir: str, tag: str, client_state: dict) -> None:
        """DeepSpeed's collective save (model shards, optimizer, scheduler) of every rank."""
        self.ds.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)

    def load(self, load_dir: str, tag: str) -> dict:
        """Collective load; returns the client state saved with it."""
        path, client_state = self.ds.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                                     load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag} under {load_dir}")
        return client_state or {}

    def named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)


def set_backend_flags(device: torch.device, deterministic: bool) -> None:
    """TF32 for speed on GPUs, or full determinism (slower) when asked; called once at engine set-up."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        logger.warning("deterministic algorithms on: expect slower training")


__all__ = ["TrainEngine", "build_ds_config", "distributed", "set_backend_flags", "warmup_constant"]


def seed_everything(seed: int, rank: int) -> int:
    """Seed python, numpy and torch with ``seed + rank``; returns that seed."""
    import random

    import numpy as np

    rank_seed = seed + rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    logger.warning("rank %d seeded with %d", rank, rank_seed) if rank else logger.info("seed %d (+rank)", seed)
    return rank_seed
