"""The VOSR generator: a LightningDiT-style latent transformer (METHOD.md §3).

Input ``[c_lq, x_t]`` on channels -> patch tokens -> ``depth`` blocks (adaLN-single
self-attention with QK-norm and 2-D RoPE, cross-attention to semantic tokens, SwiGLU)
-> adaLN final layer -> velocity with the latent's channels. Parameter names match the
released checkpoints, so ``load_state_dict`` takes them as they are.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vosr.models.conditioning import DegradationEmbed, DegradationHead, LRPixelBranch, sft
from vosr.models.layers import (
    CrossAttention,
    PatchEmbed,
    RMSNorm,
    RoPE2D,
    SelfAttention,
    SemanticMLP,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    swiglu_hidden,
)

if TYPE_CHECKING:
    from vosr.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DiTConfig:
    """Hyper-parameters of ``VOSRDiT`` (names as in the reference's ``configs`` metadata)."""

    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int = 2
    in_channels: int = 8
    out_channels: int = 4
    mlp_ratio: float = 4.0
    semantic_dim: int | None = None
    """Width of the semantic tokens z; None = no semantic MLP and no cross-attention."""
    semantic_mlp_ratio: int = 3
    with_r: bool = False
    """Second time input r (the one-step student's ``r_embedder``)."""
    with_omega: bool = False
    """Guidance input omega (``omega_embedder``, zero-initialised): a student distilled over a guidance range."""
    prediction: str = "v"
    """``v``: the output is the velocity; ``x``: the output is x0, returned as ``(x_t - x0) / max(t, x_min_t)``;
    ``x_residual``: x0 = condition + output, returned the same way."""
    x_min_t: float = 0.05
    grad_checkpointing: bool = False
    input_size: int = 64
    """Latent side the ``feat_rope`` buffers are built for (64 = 512-px SD latents)."""
    lr_pixel_branch: bool = False
    """Build the LR-pixel SFT branch (``lr_pixels=`` input; ``vosr.models.conditioning.LRPixelBranch``)."""
    lr_pixel_blocks: int = 0
    """Its reach: 0 = after the patch embedding only, k = also after each of the first k blocks."""
    lr_pixel_hidden: int = 64
    """Channels of its conv stack."""
    lr_pixel_unshuffle: int = 1
    """LR pixels per token side after area-resizing the upsampled LR (pixel-unshuffle factor)."""
    degradation_scores: int = 0
    """Number of degradation scores embedded into the time conditioning (``degradation=`` input); 0 = off."""
    degradation_estimator: bool = False
    """Build the regressor of those scores on the semantic tokens (needs semantic_dim and degradation_scores)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"model.hidden_size={self.hidden_size} / model.num_heads={self.num_heads} must give "
                             "an integer head dim divisible by 4 (2-D RoPE)")
        if self.input_size % self.patch_size:
            raise ValueError(f"latent size {self.input_size} is not a multiple of model.patch_size={self.patch_size}")
        if self.degradation_estimator and (self.semantic_dim is None or not self.degradation_scores):
            raise ValueError("model.degradation_estimator needs semantic tokens (semantic.kind=timm) and "
                             "model.degradation_condition=true")
        if self.lr_pixel_blocks > self.depth:
            raise ValueError(f"model.lr_pixel_blocks={self.lr_pixel_blocks} exceeds the model's depth {self.depth}")


# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------


class VOSRBlock(nn.Module):
    """``x += g1 * SelfAttn(mod(norm1 x)); x += CrossAttn(x, s); x += g2 * SwiGLU(mod(norm2 x))``."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d ** 0.5)
        self.norm1 = RMSNorm(d)
        self.attn = SelfAttention(d, cfg.num_heads)
        self.norm2 = RMSNorm(d)
        self.mlp = SwiGLU(d, swiglu_hidden(d, cfg.mlp_ratio))
        self.cross_attn = CrossAttention(d, cfg.num_heads) if cfg.semantic_dim is not None else None

    def forward(self, x: torch.Tensor, t0: torch.Tensor, s: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x (B, N, D), t0 (B, 6D) shared adaLN-single output, s (B, M, D) or None."""
        mods = (self.scale_shift_table[None] + t0.unflatten(1, (6, -1))).chunk(6, dim=1)  # 6 x (B, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope))
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, s)
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """RMSNorm, adaLN (shift, scale) from c, Linear to patch^2 * out channels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C)


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


class VOSRDiT(nn.Module):
    """The VOSR transformer; ``forward(x, t, z, r)`` returns the velocity (B, C, H, W)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        grid = cfg.input_size // cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.feat_rope = RoPE2D(d // cfg.num_heads, grid, grid)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # adaLN-single
        self.blocks = nn.ModuleList(VOSRBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        if cfg.semantic_dim is not None:
            self.layer_norm = nn.LayerNorm(cfg.semantic_dim)
            self.mlp_ca = SemanticMLP(cfg.semantic_dim, cfg.semantic_mlp_ratio * d, d)
        self.r_embedder = TimestepEmbedder(d) if cfg.with_r else None
        self.omega_embedder = TimestepEmbedder(d) if cfg.with_omega else None
        # Optional conditioning modules (built last, so a model without them is built exactly as before).
        self.lr_branch = (LRPixelBranch(d, cfg.lr_pixel_unshuffle, cfg.lr_pixel_hidden, cfg.lr_pixel_blocks)
                          if cfg.lr_pixel_branch else None)
        self.degradation_embed = DegradationEmbed(cfg.degradation_scores, d) if cfg.degradation_scores else None
        self.degradation_head = (DegradationHead(cfg.semantic_dim, cfg.degradation_scores)
                                 if cfg.degradation_estimator and cfg.semantic_dim is not None else None)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As the reference: Xavier linears, N(0, 0.02) time MLPs and adaLN-single (``t_block``) with zero
        bias; zero final modulation and output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        for embedder in (self.t_embedder, self.r_embedder):
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        d = self.cfg.hidden_size
        for block in self.blocks:
            nn.init.normal_(block.scale_shift_table, std=d ** -0.5)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.zeros_(self.t_block[1].bias)
        for layer in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.omega_embedder is not None:  # zero output: a fresh omega input changes nothing
            nn.init.normal_(self.omega_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.omega_embedder.mlp[2].weight)
            nn.init.zeros_(self.omega_embedder.mlp[2].bias)
        for extra in (self.lr_branch, self.degradation_embed):
            if extra is not None:
                extra.reset_parameters()  # neutral at init: a model without them loads unchanged

    # -- conditioning -------------------------------------------------------------------

    def time_condition(self, t: torch.Tensor, r: torch.Tensor | None,
                       omega: torch.Tensor | None = None) -> torch.Tensor:
        """c = emb(t) + (t - r) * emb_r(r) [+ emb_w(omega)] (B, D); the r term vanishes when r is None or
        r = t, the omega term when omega is None (or the embedder is still at its zero initialisation)."""
        c = self.t_embedder(t)
        if self.r_embedder is not None and r is not None:
            c = c + (t - r).to(c.dtype)[:, None] * self.r_embedder(r)
        if omega is not None:
            if self.omega_embedder is None:
                raise ValueError("omega given to a model without a guidance input (model.with_omega=false); "
                                 "only students distilled with distill.guidance_range take it")
            c = c + self.omega_embedder(omega.to(t.device).expand(t.shape[0]))
        return c

    def semantic_tokens(self, z: torch.Tensor | None) -> torch.Tensor | None:
        """Shared LayerNorm + MLP: z (B, M, Dz) -> s (B, M, D)."""
        if self.cfg.semantic_dim is None:
            if z is not None:
                raise ValueError("semantic tokens given to a model built without them; set semantic.kind "
                                 "consistently with the model (model has semantic_dim=None)")
            return None
        if z is None or z.shape[-1] != self.cfg.semantic_dim:
            got = None if z is None else tuple(z.shape)
            raise ValueError(f"semantic tokens must be (B, M, {self.cfg.semantic_dim}), got {got}; "
                             "check semantic.* matches the model's semantic_dim")
        return self.mlp_ca(self.layer_norm(z.to(self.layer_norm.weight.dtype)))  # bf16 params: CPU needs one dtype

    # -- forward ------------------------------------------------------------------------

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p); grids need not be square."""
        p, c = self.cfg.patch_size, self.cfg.out_channels
        x = x.view(x.shape[0], h, w, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None,
                r: torch.Tensor | None = None, *, omega: torch.Tensor | None = None,
                degradation: torch.Tensor | None = None, lr_pixels: torch.Tensor | None = None,
                return_degradation: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, 2C, H, W) = [condition, noisy latent]; t, r (B,) in [0, 1]; z (B, M, Dz) -> (B, C, H, W).

        ``omega`` (B,) or a scalar tensor: the guidance a ``with_omega`` student samples at. Optional inputs
        of the conditioning modules (ignored as None): ``degradation`` (B, K) scores in [0, 1] (NaN rows =
        none), ``lr_pixels`` (B, 3, H*d, W*d) the upsampled LR of this latent in [0, 1].
        ``return_degradation`` also returns the estimator's scores (B, K) of ``z`` (None without one).
        """
        p = self.cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"latent size {tuple(x.shape[-2:])} is not a multiple of model.patch_size={p}")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.x_embedder(x)  # (B, N, D)
        c = self.time_condition(t, r, omega)  # (B, D)
        if degradation is not None and self.degradation_embed is not None:
            c = c + self.degradation_embed(degradation).to(c.dtype)
        t0 = self.t_block(c)  # (B, 6D)
        s = self.semantic_tokens(z)  # (B, M, D) or None
        rope = self.feat_rope.tables(h, w, tokens.device)  # 2 x (N, head_dim)
        lr_mods = None
        if lr_pixels is not None and self.lr_branch is not None:
            lr_mods = self.lr_branch(lr_pixels, (h, w), c)  # sites x (scale, shift) (B, N, D)
            tokens = sft(tokens, lr_mods[0])
        for i, block in enumerate(self.blocks):
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, t0, s, rope, use_reentrant=False)
            else:
                tokens = block(tokens, t0, s, rope)
            if lr_mods is not None and i + 1 < len(lr_mods):
                tokens = sft(tokens, lr_mods[i + 1])
        out = self.unpatchify(self.final_layer(tokens, c), h, w)  # (B, C, H, W)
        if self.cfg.prediction in ("x", "x_residual"):  # out is x0: the velocity of the straight path through x_t
            cond, x_t = x[:, :self.cfg.out_channels], x[:, self.cfg.out_channels:]  # (B, C, H, W) each
            if self.cfg.prediction == "x_residual":
                out = cond.to(out.dtype) + out
            t_floor = t.to(out.dtype).clamp(min=self.cfg.x_min_t).reshape(-1, 1, 1, 1)
            out = (x_t.to(out.dtype) - out) / t_floor
        if not return_degradation:
            return out
        estimate = self.degradation_head(z) if self.degradation_head is not None and z is not None else None
        return out, estimate

    def estimate_degradation(self, z: torch.Tensor) -> torch.Tensor | None:
        """Estimated degradation scores (B, K) of semantic tokens z (B, M, Dz); None without an estimator."""
        return None if self.degradation_head is None else self.degradation_head(z)

    # -- utilities ----------------------------------------------------------------------

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` each block in place (state-dict keys stay unchanged)."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def num_params(self) -> int:
        """Number of parameters (buffers such as the RoPE tables excluded)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self, h_latent: int, w_latent: int, n_sem_tokens: int = 0) -> int:
        """Forward matmul FLOPs (2 per multiply-add) for one latent of (h_latent, w_latent)."""
        cfg, d = self.cfg, self.cfg.hidden_size
        p = cfg.patch_size
        n = (h_latent // p) * (w_latent // p)
        m = n_sem_tokens if cfg.semantic_dim is not None else 0
        hid = swiglu_hidden(d, cfg.mlp_ratio)
        per_block = n * (3 * d * d + d * d) + 2 * n * n * d + n * 3 * d * hid  # self-attn + SwiGLU
        if cfg.semantic_dim is not None:
            per_block += 2 * n * d * d + 2 * m * d * d + 2 * n * m * d  # q, proj, k, v, scores, values
        macs = cfg.depth * per_block + 6 * d * d + 2 * d * d  # blocks, shared adaLN-single, final adaLN
        macs += n * cfg.in_channels * p * p * d + n * d * p * p * cfg.out_channels  # patch in / out
        n_time = 1 + int(cfg.with_r) + int(cfg.with_omega)
        macs += n_time * (256 * d + d * d)
        if cfg.semantic_dim is not None:
            macs += m * (cfg.semantic_dim * cfg.semantic_mlp_ratio * d + cfg.semantic_mlp_ratio * d * d)
        return 2 * macs


# ---------------------------------------------------------------------------------------
# Presets and builder
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "depth": 2, "num_heads": 4},
    "0.5B": {"hidden_size": 1024, "depth": 28, "num_heads": 16},
    "1.4B": {"hidden_size": 1536, "depth": 36, "num_heads": 24},
}


def dit_config(cfg: ModelConfig, *, latent_channels: int, semantic_dim: int | None,
               input_size: int = 64, lr_unshuffle: int = 1) -> DiTConfig:
    """Resolve a ``ModelConfig`` (preset + overrides) into a ``DiTConfig``."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset={cfg.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    arch = dict(PRESETS[cfg.preset])
    for name in ("hidden_size", "depth", "num_heads"):
        if getattr(cfg, name) is not None:
            arch[name] = getattr(cfg, name)
    return DiTConfig(**arch, patch_size=cfg.patch_size, in_channels=2 * latent_channels,
                     out_channels=latent_channels, semantic_dim=semantic_dim, with_r=cfg.with_r,
                     with_omega=cfg.with_omega, prediction=cfg.prediction, x_min_t=cfg.x_min_t,
                     grad_checkpointing=cfg.grad_checkpointing, input_size=input_size,
                     **conditioning_kwargs(cfg, lr_unshuffle))


def conditioning_kwargs(cfg: ModelConfig, lr_unshuffle: int = 1) -> dict[str, Any]:
    """``DiTConfig`` fields of the optional conditioning modules from ``model.*`` (empty when all are off, so
    a plain model's config is unchanged)."""
    out: dict[str, Any] = {}
    if getattr(cfg, "lr_pixel_branch", False):
        out.update(lr_pixel_branch=True, lr_pixel_blocks=cfg.lr_pixel_blocks, lr_pixel_hidden=cfg.lr_pixel_hidden,
                   lr_pixel_unshuffle=lr_unshuffle)
    if getattr(cfg, "degradation_condition", False):
        from vosr.data.degrade import SCORE_NAMES

        out.update(degradation_scores=len(SCORE_NAMES), degradation_estimator=cfg.degradation_estimator)
    return out


def build_dit(cfg: ModelConfig, *, latent_channels: int, semantic_dim: int | None,
              input_size: int = 64, lr_unshuffle: int = 1) -> VOSRDiT:
    """Build the transformer for latents with ``latent_channels`` and semantic tokens of ``semantic_dim``;
    ``lr_unshuffle`` is the LR-pixel branch's factor (``conditioning.lr_unshuffle_factor``)."""
    model = VOSRDiT(dit_config(cfg, latent_channels=latent_channels, semantic_dim=semantic_dim,
                               input_size=input_size, lr_unshuffle=lr_unshuffle))
    if cfg.compile:
        model.compile_blocks()
    logger.info("VOSRDiT preset=%s: %.1fM parameters", cfg.preset, model.num_params() / 1e6)
    return model
