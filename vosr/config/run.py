"""The typed run configuration: one ``kw_only`` dataclass per component, nested in ``RunConfig``.

Every field documents its unit. Cross-field checks live in ``__post_init__`` and raise
``ValueError`` naming the dotted key to change, so a bad config fails before any GPU work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vosr.config.core import check as _check
from vosr.config.degradation import DegradationConfig


@dataclass(kw_only=True)
class ModelConfig:
    preset: str = "tiny"
    """Architecture preset of ``vosr.models.dit.PRESETS``: tiny, 0.5B or 1.4B."""
    hidden_size: int | None = None
    """Override the preset's width D (channels)."""
    depth: int | None = None
    """Override the preset's number of blocks."""
    num_heads: int | None = None
    """Override the preset's number of attention heads."""
    patch_size: int = 2
    """Latent pixels per token side."""
    with_r: bool = False
    """Build the second time input ``r`` (the one-step student)."""
    with_omega: bool = False
    """Build the guidance input ``omega`` (a student distilled with distill.guidance_range)."""
    prediction: Literal["v", "x", "x_residual"] = "v"
    """What the network's last layer outputs. ``v``: the velocity (the paper, the reference, the released
    weights). ``x``: the clean latent x0, turned into the velocity ``(x_t - x0) / max(t, x_min_t)`` inside
    the forward, so losses, samplers and distillation are unchanged (Li & He 2025, "Back to Basics: Let
    Denoising Generative Models Denoise"): a narrow network over high-dimensional pixel tokens cannot
    carry the noise a velocity must reproduce, but can output the image. For small pixel-space models.
    ``x_residual``: x0 = condition + output, the network adds detail to its LR condition (a token narrower
    than its pixels then still passes the LR's own detail through)."""
    x_min_t: float = 0.05
    """``prediction: x`` only: floor of t in the division (the velocity stays finite as t -> 0)."""
    grad_checkpointing: bool = False
    """Recompute each block in backward (activation checkpointing) to save memory."""
    compile: bool = False
    """Wrap the transformer blocks with ``torch.compile``."""
    init_from: str | None = None
    """Optional ``.safetensors`` (released VOSR keys or our export) to start from."""
    lr_pixel_branch: bool = False
    """LR-pixel branch (CODSR's LQ-guided feature modulation): the upsampled LR pixels, pixel-unshuffled onto the
    token grid, give per-token (gamma, beta) for a zero-initialised time-aware SFT of the patch-embedded tokens."""
    lr_pixel_blocks: int = 0
    """How far the LR-pixel branch reaches: 0 = after the patch embedding only; k = also after each of the first k
    blocks."""
    lr_pixel_hidden: int = 64
    """Channels of the LR-pixel branch's conv stack."""
    degradation_condition: bool = False
    """Degradation-aware conditioning (S3Diff): an embedding of the per-image degradation scores in [0, 1]
    (``vosr.data.degrade.SCORE_NAMES``) is added to the time conditioning (zero-initialised)."""
    degradation_drop: float = 0.1
    """Training probability of dropping an image's degradation scores (the model also learns to work without)."""
    degradation_estimator: bool = False
    """Train a small regressor of the degradation scores on the semantic tokens jointly (its loss logged as
    ``loss/degradation_estimator``); inference uses it when ``--degradation`` is not given."""
    degradation_estimator_weight: float = 1.0
    """Weight of the estimator's MSE in the training loss."""

    def __post_init__(self) -> None:
        _check(self.patch_size >= 1, f"model.patch_size must be >= 1, got {self.patch_size}")
        _check(0 < self.x_min_t <= 1, f"model.x_min_t must lie in (0, 1], got {self.x_min_t}")
        _check(self.lr_pixel_blocks >= 0, f"model.lr_pixel_blocks must be >= 0, got {self.lr_pixel_blocks}")
        _check(self.lr_pixel_hidden >= 1, f"model.lr_pixel_hidden must be >= 1, got {self.lr_pixel_hidden}")
        _check(0.0 <= self.degradation_drop <= 1.0,
               f"model.degradation_drop must be in [0, 1], got {self.degradation_drop}")
        _check(not self.degradation_estimator or self.degradation_condition,
               "model.degradation_estimator needs model.degradation_condition=true (it estimates its scores)")
        _check(self.degradation_estimator_weight >= 0, "model.degradation_estimator_weight must be >= 0")


@dataclass(kw_only=True)
class AutoencoderConfig:
    kind: Literal["pixel", "sd_vae", "qwen_image"] = "pixel"
    """Latent space: raw pixels (optionally space-to-depth), SD-2.1 VAE or Qwen-Image 2-D VAE."""
    path: str | None = None
    """Local diffusers folder or single ``.safetensors`` of the VAE (required unless pixel)."""
    decoder_path: str | None = None
    """Optional lighter decoder (the released 0.5B model's) replacing the VAE decoder."""
    scaling_factor: float | None = None
    """Latent = (sample - shift) * scale; None takes the model's own (0.18215 for SD-2.1)."""
    pixel_unshuffle: int = 1
    """Pixel space only: space-to-depth factor (1 = plain RGB latent)."""
    tile_size: int = 512
    """Inference: largest image side (pixels) encoded/decoded in one piece."""
    tile_overlap: int = 64
    """Inference: overlap (pixels) between encoder/decoder tiles."""
    sample_posterior: bool = True
    """Training encodes HQ and LQ with a draw from the VAE posterior, as the reference does
    (``latent_dist.sample()``); false encodes with the posterior mean (less latent noise in the
    targets, but not what the released models were trained on). Inference always uses the mean."""

    def __post_init__(self) -> None:
        _check(self.kind == "pixel" or self.path is not None,
               f"autoencoder.path is required for autoencoder.kind={self.kind} "
               "(a local diffusers folder or .safetensors file)")
        _check(self.pixel_unshuffle >= 1, "autoencoder.pixel_unshuffle must be >= 1")
        _check(0 <= self.tile_overlap < self.tile_size,
               "autoencoder.tile_overlap must be in [0, autoencoder.tile_size)")


@dataclass(kw_only=True)
class SemanticConfig:
    kind: Literal["none", "timm"] = "timm"
    """Frozen vision encoder giving semantic tokens; ``none`` drops the cross-attention."""
    timm_name: str = "vit_base_patch14_dinov2"
    """timm architecture name (DINOv2 ViT-B/14 for 0.5B, ViT-L/14 for 1.4B; DINOv3 ``vit_base_patch16_dinov3``,
    ``vit_small_patch16_dinov3``, ``vit_large_patch16_dinov3``: GramSR's dense features)."""
    path: str | None = None
    """Local weights file (.safetensors/.pth); required unless random_init."""
    random_init: bool = False
    """Use random weights on purpose (tests and pixel-space demos only)."""
    block_index: int = 8
    """Take the raw output of this block (8 for ViT-B, 17 for ViT-L), patch tokens only."""
    input_size: int = 448
    """Square input side in pixels (448 -> 32x32 tokens for patch 14, 28x28 for DINOv3's patch 16)."""
    num_tokens: int | None = None
    """Semantic tokens handed to the transformer: None = the encoder's grid ((input_size / patch)^2); a square
    number resizes the token grid (bilinear) to that many."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``timm.create_model`` arguments (e.g. depth, embed_dim for tiny test encoders)."""

    def __post_init__(self) -> None:
        _check(self.kind == "none" or self.random_init or self.path is not None,
               "semantic.path is required (local DINOv2 weights file); "
               "set semantic.random_init=true only for tests, or semantic.kind=none")
        _check(self.block_index >= 0, "semantic.block_index must be >= 0")
        _check(self.num_tokens is None or (self.num_tokens >= 1 and round(self.num_tokens ** 0.5) ** 2 ==
                                           self.num_tokens),
               f"semantic.num_tokens={self.num_tokens} must be a square number (a token grid) or null")


@dataclass(kw_only=True)
class FlowConfig:
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """How training times t in (0, 1) are drawn."""
    logit_mean: float = 0.0
    """Logit-normal mean (time_sampling=logit_normal)."""
    logit_std: float = 1.0
    """Logit-normal standard deviation."""
    cond_noise_mean: float = 5.0
    """Condition keep-ratio a = sigmoid(N(mean, std)) for spherical LQ-latent noise."""
    cond_noise_std: float = 1.0
    """Standard deviation of that normal."""
    cfg_ratio: float = 0.1
    """Fraction of samples given the weak anchor w*lq and zero semantic tokens."""
    weak_min: float = 0.05
    """Lower end of the weak-anchor weight w ~ U[weak_min, weak_max] in training."""
    weak_max: float = 0.25
    """Upper end of the weak-anchor weight."""
    sample_steps: int = 25
    """Euler steps of the multi-step sampler."""
    guidance: float = -0.5
    """Guidance s in v_weak + s (v_cond - v_weak): the reference's presets are -0.5 for real-world
    photos (the default) and 0.5 for screen content; 1 is the conditioned branch alone."""
    weak_anchor: float = 0.15
    """Weak-anchor weight w used by the sampler's weak branch (mid-range by default)."""
    sem_drop_ratio: float = 0.0
    """Fraction of the non-weak training samples that keep the noised LR latent but get zero semantic
    tokens, so the teacher learns the LR-only branch v(lq, 0) of per-branch guidance; 0 = today's draws."""
    val_guidance_grid: list[list[float]] = field(default_factory=list)
    """Teacher validation: (s_lr, s_sem) pairs sampled into one labelled sheet (val/guidance_*.png); [] = off."""
    cond_noise_map: Literal["none", "gradient"] = "none"
    """Region-adaptive condition noise (CODSR's RGPA): ``gradient`` replaces the per-sample keep ratio a by a
    spatial map from the Sobel gradient magnitude of the upsampled LR (textured regions get more noise);
    ``none`` keeps the per-sample scalar a = sigmoid(N(mean, std))."""
    cond_noise_a_min: float = 0.9
    """Keep ratio a where the LR gradient is largest (cond_noise_map=gradient)."""
    cond_noise_a_max: float = 0.999
    """Keep ratio a in flat regions (cond_noise_map=gradient)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.cond_noise_a_min <= self.cond_noise_a_max <= 1.0,
               "flow.cond_noise_a_min <= flow.cond_noise_a_max must both lie in [0, 1]")
        _check(0.0 <= self.cfg_ratio <= 1.0, f"flow.cfg_ratio must be in [0, 1], got {self.cfg_ratio}")
        _check(0.0 <= self.sem_drop_ratio <= 1.0, f"flow.sem_drop_ratio must be in [0, 1], got {self.sem_drop_ratio}")
        _check(all(len(pair) == 2 for pair in self.val_guidance_grid),
               "flow.val_guidance_grid must be a list of [s_lr, s_sem] pairs")
        _check(0.0 <= self.weak_min <= self.weak_max <= 1.0,
               "flow.weak_min <= flow.weak_max must both lie in [0, 1]")
        _check(self.sample_steps >= 1, "flow.sample_steps must be >= 1")
        _check(self.logit_std > 0 and self.cond_noise_std >= 0, "flow.*_std must be positive")


@dataclass(kw_only=True)
class DistillConfig:
    teacher: str | None = None
    """Teacher weights: an exported ``ema.safetensors`` or a run/checkpoint folder."""
    objective: Literal["rcgm", "shortcut"] = "rcgm"
    """Target for the (t, r) consistency term."""
    delta: float = 0.01
    """RCGM: small step delta."""
    num_substeps: int = 2
    """RCGM: sub-steps N over [t_m, r]."""
    u_weight: float = 1.0
    """lambda: weight of the (t, r) term against the r = t term."""
    guidance: float = 0.5
    """omega of the guided teacher velocity."""
    guidance_t_start: float | None = None
    """Apply omega only for t in [start, end] (1 outside); None = everywhere."""
    guidance_t_end: float | None = None
    """End of that window."""
    weak_anchor: float = 0.1
    """Fixed weak-anchor weight w for lq_weak."""
    correction_clamp: float = 1.0
    """RCGM correction is clamped to [-c, c]."""
    lpips_weight: float = 0.0
    """Optional LPIPS term on the one-step decode (0 = off)."""
    guidance_range: list[float] | None = None
    """[lo, hi]: draw omega per sample from U[lo, hi] and give it to the student (its omega embedder), so
    its guidance stays live at inference (``vosr.infer --guidance`` inside the range); None = the fixed
    ``distill.guidance`` (the reference student)."""
    gram_weight: float = 0.0
    """Gram-matrix texture loss between the one-step decode and the HQ image in the frozen semantic
    encoder's token features (0 = off)."""
    gram_blocks: list[int] = field(default_factory=list)
    """Encoder blocks whose token features enter the Gram loss (each <= semantic.block_index); [] = the
    block the tokens come from (semantic.block_index)."""

    def __post_init__(self) -> None:
        _check(self.delta > 0, "distill.delta must be > 0")
        _check(self.gram_weight >= 0, "distill.gram_weight must be >= 0 (0 = off)")
        _check(all(b >= 0 for b in self.gram_blocks), "distill.gram_blocks must be block indices >= 0")
        _check(self.guidance_range is None or (len(self.guidance_range) == 2
                                               and self.guidance_range[0] < self.guidance_range[1]),
               f"distill.guidance_range must be [lo, hi] with lo < hi, got {self.guidance_range}")
        _check(self.num_substeps >= 1, "distill.num_substeps must be >= 1")
        _check(self.lpips_weight >= 0, "distill.lpips_weight must be >= 0 (0 = off)")
        _check((self.guidance_t_start is None) == (self.guidance_t_end is None),
               "distill.guidance_t_start and distill.guidance_t_end must be set together")


@dataclass(kw_only=True)
class DataSource:
    shards: str
    """Shard glob, brace pattern (``a-{000000..000009}.tar``) or folder of ``*.tar``."""
    weight: float = 1.0
    """Relative sampling weight in the mix."""

    def __post_init__(self) -> None:
        _check(self.weight > 0, f"data source {self.shards}: weight must be > 0")


@dataclass(kw_only=True)
class DataConfig:
    train: list[DataSource] = field(default_factory=list)
    """Training mix: shard sources with weights."""
    mix_file: str | None = None
    """Optional text file of the reference's ``path, weight`` lines, added to ``train``."""
    val: str | None = None
    """Validation shards (fixed, not resampled); None = no validation."""
    val_size: int = 8
    """Validation images taken from ``val``."""
    crop_size: int = 512
    """HR crop side in pixels."""
    scale: int = 4
    """Super-resolution factor (HR side / LR side)."""
    batch_size: int = 4
    """Micro-batch per rank (images)."""
    num_workers: int = 4
    """Decoding worker processes per rank. Measured (benchmarks/stream_throughput.py, the 88 wallpapers, 512^2
    crops, crops_per_image 4): one worker gives ~60 crops per CPU-second from whole-image shards, ~310 from
    ``pack.py --tile 768`` shards; 4 cover 3x the ~80 samples/s an H100 takes at 0.5B from whole images."""
    crops_per_image: int = 4
    """Crops cut from one decoded image, whatever its size (so every image is drawn as often as with 1). Each
    crop's position and flips are drawn independently; the crops of one image leave the shuffle buffer at
    random times. Measured: 4 gives 2.9x the crops per CPU-second of 1 on whole photos, 1.9x on 768 tiles."""
    shuffle_buffer_mb: float = 256.0
    """Shuffle buffer of decoded crops per worker (MiB): 256 MiB holds 341 crops of 512^2."""
    small_images: Literal["skip", "upscale"] = "skip"
    """Images whose short side is below crop_size: skip (counted as ``small``), or upscale bicubically."""
    flip: bool = True
    """Random horizontal/vertical flips of crops."""

    def __post_init__(self) -> None:
        _check(self.crop_size >= 1 and self.crop_size % self.scale == 0,
               f"data.crop_size={self.crop_size} must be a positive multiple of data.scale={self.scale}; "
               "set data.crop_size to one (e.g. 512)")
        _check(self.batch_size >= 1 and self.num_workers >= 0, "data.batch_size >= 1, data.num_workers >= 0")
        _check(self.crops_per_image >= 1, f"data.crops_per_image={self.crops_per_image} must be >= 1")
        _check(self.shuffle_buffer_mb > 0, f"data.shuffle_buffer_mb={self.shuffle_buffer_mb} must be > 0 (MiB)")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 5e-5
    """AdamW learning rate after warm-up (constant)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, on every parameter as in the reference."""
    decay_1d: bool = True
    """Also decay 1-D parameters (norm weights and biases), as the reference does;
    false exempts them, the common practice for large transformers."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    warmup_steps: int = 0
    """Linear LR warm-up (optimizer steps)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_steps: int = 400_000
    """Optimizer steps of the run."""
    ema_decay: float = 0.9999
    """EMA decay per optimizer step (fp32)."""
    ema_warmup: bool = False
    """Use min(decay, (1 + n) / (10 + n)) so an early EMA tracks the model. Off by default, as in the
    reference: a distilled student's EMA then keeps most of its teacher initialisation for the first
    thousands of steps (with warm-up it forgets it at once), which is what makes it a safe export
    early on. Turn on for short from-scratch runs whose EMA must follow the model quickly."""
    max_nonfinite: int = 20
    """Stop the run after this many skipped steps with a non-finite loss."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.grad_accum >= 1 and self.max_steps >= 1, "optim.grad_accum and optim.max_steps must be >= 1")
        _check(0.0 <= self.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)")


@dataclass(kw_only=True)
class EngineConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage."""
    precision: Literal["bf16", "bf16_autocast", "fp32"] = "bf16"
    """bf16: DeepSpeed's bf16 mode (bf16 parameters, gradients and their communication; fp32 master weights and
    optimizer state inside DeepSpeed, partitioned by ZeRO; the fp32 EMA follows the master weights), forward
    under bf16 autocast; needs zero_stage >= 1. bf16_autocast: fp32 parameters, gradients and communication,
    forward and backward under bf16 autocast (the earlier "bf16"). fp32: everything in fp32."""
    global_batch_size: int | None = None
    """If set, must equal data.batch_size x optim.grad_accum x world size."""
    deterministic: bool = False
    """Deterministic algorithms (slower)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; auto = nccl on GPU, gloo on CPU."""

    def __post_init__(self) -> None:
        _check(self.precision != "bf16" or self.zero_stage >= 1,
               "engine.precision=bf16 (DeepSpeed's bf16 mode) needs engine.zero_stage >= 1; "
               "use engine.precision=bf16_autocast with engine.zero_stage=0")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 1000
    """Save every N optimizer steps (and on preemption and at the end)."""
    keep_latest: int = 3
    """Complete checkpoints kept (>= 2 so one survives a crash during a save)."""
    resume: str = "auto"
    """auto = newest complete checkpoint of the run dir, none, or a checkpoint folder. Resuming is exact: the
    data stream goes on from its saved position (per rank and worker), nothing is replayed."""
    export_ema: bool = True
    """Write ``ema.safetensors`` (consolidated, for inference) with each save."""
    export_raw: bool = False
    """Also write ``model.safetensors``, the raw (non-EMA) weights, with each save (to compare the two)."""
    allow_config_change: bool = False
    """Resume even when the checkpoint was written with another seed, model or data (refused by default)."""

    def __post_init__(self) -> None:
        _check(self.keep_latest >= 2, "checkpoint.keep_latest must be >= 2 so a crash mid-save "
               "leaves a complete checkpoint")
        _check(self.every_steps >= 1, "checkpoint.every_steps must be >= 1")


@dataclass(kw_only=True)
class LogConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; offline needs no network."""
    project: str = "vosr"
    """wandb project."""
    every_steps: int = 10
    """Log scalars every N steps."""
    val_every: int = 1000
    """Validate (metrics + image grid) every N steps; 0 = never."""
    progress: bool = True
    """Show a progress bar on rank 0."""


@dataclass(kw_only=True)
class RunConfig:
    stage: Literal["teacher", "distill"] = "teacher"
    """Which run this config drives."""
    name: str | None = None
    """Run name; default = the config file's stem."""
    run_dir: str | None = None
    """Output folder; default runs/<name>-<timestamp>. Reuse it to resume."""
    seed: int = 0
    """Global seed; rank r uses seed + r."""
    degradation: DegradationConfig
    """Second-order Real-ESRGAN parameters (usually a path to configs/degradation/*.yaml)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        _check(self.stage != "distill" or self.distill.teacher is not None,
               "distill.teacher is required for stage=distill (the teacher's ema.safetensors)")
        _check(self.data.scale == self.degradation.scale,
               f"data.scale={self.data.scale} differs from degradation.scale={self.degradation.scale}")
        _check(self.distill.gram_weight == 0 or self.semantic.kind != "none",
               "distill.gram_weight > 0 needs the semantic encoder (semantic.kind is none)")
        _check(all(b <= self.semantic.block_index for b in self.distill.gram_blocks),
               f"distill.gram_blocks={self.distill.gram_blocks} must be <= semantic.block_index="
               f"{self.semantic.block_index} (the encoder is cut after that block)")
