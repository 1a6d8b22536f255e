"""The memory model (``vosr.runtime.memory``) filled in for a VOSR run: parameter counts, frozen parts, tokens.

``run_memory_plan`` uses the built model and frozen parts (at start-up); ``config_memory_plan`` builds the
transformer on the meta device and estimates the frozen encoders from their configs (``vosr.launch --dry-run``:
no weights are read).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vosr.config import RunConfig
from vosr.models.layers import swiglu_hidden
from vosr.runtime.memory import MemoryPlan, plan_memory

MIB = 1024**2
LATENT = {"sd_vae": (4, 8), "qwen_image": (16, 8)}
"""(latent channels, downsampling) of the VAE kinds."""
VAE_PARAMS = {"sd_vae": 83_653_863, "qwen_image": 126_892_531}
"""Parameters of the frozen VAEs (SD-2.1 AutoencoderKL; Qwen-Image's 2-D VAE, approximate) for dry runs."""


def _numel_bytes(module: nn.Module | None) -> float:
    if module is None:
        return 0.0
    return float(sum(p.numel() * p.element_size() for p in module.parameters()))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def graphs_with_grad(cfg: RunConfig) -> int:
    """Forward passes per micro-batch whose graphs are alive together at backward (distillation: 2 student
    passes, the r = t and (t, r) terms; +1 with the LPIPS term)."""
    if cfg.stage != "distill":
        return 1
    return 2 + (cfg.distill.lpips_weight > 0)


def activation_bytes(cfg: RunConfig, dit_cfg, *, downsample: int, semantic_tokens: int) -> float:
    """Activations of one micro-batch from the transformer's shape (``DiTConfig``) and the crop."""
    from vosr.runtime.memory import transformer_activation_bytes

    latent = cfg.data.crop_size // downsample
    tokens = (latent // dit_cfg.patch_size) ** 2
    c = dit_cfg.out_channels
    # Embedding input, head (norm, modulate, linear, unpatchify: 4 N D) and the loss's latent-sized tensors.
    extra = 4 * tokens * dit_cfg.hidden_size + 10 * c * latent * latent
    act_bytes = 4.0 if cfg.engine.precision == "fp32" else 2.7
    return transformer_activation_bytes(
        tokens=tokens, width=dit_cfg.hidden_size, depth=dit_cfg.depth, micro_batch=cfg.data.batch_size,
        ffn_hidden=swiglu_hidden(dit_cfg.hidden_size, dit_cfg.mlp_ratio),
        cross_tokens=semantic_tokens if dit_cfg.semantic_dim is not None else 0,
        checkpointing=dit_cfg.grad_checkpointing, act_bytes=act_bytes, extra_elems_per_sample=extra,
        graphs=graphs_with_grad(cfg))


def other_bytes(cfg: RunConfig, trainable: int, *, rank: int = 0, host: bool = True) -> float:
    """Host extras, counted only where the run's memory is host memory (CPU runs): rank 0's fp32 validation
    copy of the model; the shuffle buffer when decoding in-process."""
    out = 0.0
    if not host:
        return out
    if rank == 0 and cfg.data.val is not None and cfg.log.val_every > 0:
        out += 4.0 * trainable
    if cfg.data.num_workers == 0:
        out += cfg.data.shuffle_buffer_mb * MIB
    return out


def run_memory_plan(cfg: RunConfig, model: nn.Module, parts, *, world_size: int, device: torch.device,
                    teacher_bytes: float | None = None, rank: int = 0) -> MemoryPlan:
    """The plan for a built ``model`` (before DeepSpeed takes it) and its ``FrozenParts``."""
    trainable = _trainable(model)
    frozen = _numel_bytes(parts.autoencoder) + _numel_bytes(parts.semantic)
    if teacher_bytes is None and cfg.stage == "distill":
        bf16 = device.type == "cuda" and cfg.engine.precision in ("bf16", "bf16_autocast")
        teacher_bytes = (2.0 if bf16 else 4.0) * sum(p.numel() for n, p in model.named_parameters()
                                                     if not n.startswith("r_embedder."))
    frozen += teacher_bytes or 0.0
    sem_tokens = parts.semantic.num_tokens if parts.semantic is not None else 0
    acts = activation_bytes(cfg, model.cfg, downsample=parts.autoencoder.downsample, semantic_tokens=sem_tokens)
    return plan_memory(trainable=trainable, frozen_bytes=frozen, activation_bytes=acts,
                       zero_stage=cfg.engine.zero_stage, world_size=world_size, precision=cfg.engine.precision,
                       resident=device.type != "cuda",
                       other_bytes=other_bytes(cfg, trainable, rank=rank, host=device.type != "cuda"))


def _semantic_estimate(cfg: RunConfig) -> tuple[int | None, int, float]:
    """(dim, tokens, bytes) of the frozen semantic encoder, built on the meta device (no weights read)."""
    if cfg.semantic.kind == "none":
        return None, 0, 0.0
    import timm

    with torch.device("meta"):
        vit = timm.create_model(cfg.semantic.timm_name, pretrained=False, num_classes=0,
                                img_size=cfg.semantic.input_size, **cfg.semantic.timm_kwargs)
    kept = list(vit.blocks)[:cfg.semantic.block_index + 1]
    numel = sum(p.numel() for p in vit.parameters()) - sum(p.numel() for b in vit.blocks for p in b.parameters())
    numel += sum(p.numel() for b in kept for p in b.parameters())
    numel -= sum(p.numel() for p in vit.norm.parameters())  # SemanticEncoder drops the final norm
    patch = vit.patch_embed.patch_size[0]
    return int(vit.embed_dim), (cfg.semantic.input_size // patch) ** 2, float(numel)


def config_memory_plan(cfg: RunConfig, *, world_size: int, device_type: str = "cuda") -> MemoryPlan:
    """The plan from the config alone: the transformer on the meta device, frozen parts from their configs."""
    from vosr.models.dit import build_dit

    if cfg.autoencoder.kind == "pixel":
        channels, downsample, ae_params = 3 * cfg.autoencoder.pixel_unshuffle ** 2, cfg.autoencoder.pixel_unshuffle, 0
    else:
        (channels, downsample), ae_params = LATENT[cfg.autoencoder.kind], VAE_PARAMS[cfg.autoencoder.kind]
    sem_dim, sem_tokens, sem_numel = _semantic_estimate(cfg)
    stage_model = dataclasses.replace(cfg.model, with_r=cfg.stage == "distill", compile=False)
    with torch.device("meta"):
        model = build_dit(stage_model, latent_channels=channels, semantic_dim=sem_dim,
                          input_size=cfg.data.crop_size // downsample)
    cuda = device_type == "cuda"
    enc_bytes = 2.0 if cuda else 4.0  # the semantic encoder is bf16 on GPUs; the VAE stays fp32
    frozen = 4.0 * ae_params + enc_bytes * sem_numel
    trainable = _trainable(model)
    if cfg.stage == "distill":
        bf16 = cuda and cfg.engine.precision in ("bf16", "bf16_autocast")
        frozen += (2.0 if bf16 else 4.0) * sum(p.numel() for n, p in model.named_parameters()
                                               if not n.startswith("r_embedder."))
    acts = activation_bytes(cfg, model.cfg, downsample=downsample, semantic_tokens=sem_tokens)
    return plan_memory(trainable=trainable, frozen_bytes=frozen, activation_bytes=acts,
                       zero_stage=cfg.engine.zero_stage, world_size=world_size, precision=cfg.engine.precision,
                       resident=not cuda, other_bytes=other_bytes(cfg, trainable, host=not cuda))
