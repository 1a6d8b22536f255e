"""Frozen DINOv2 / DINOv3 semantic encoder (through timm) giving the transformer's semantic tokens.

METHOD.md §2: the upsampled LQ image in [0, 1] is resized bicubically to ``input_size``,
ImageNet-normalised, and the raw output of block ``block_index`` is returned as patch
tokens only (class and register tokens dropped, no final norm). DINOv2 is a timm
``VisionTransformer``; DINOv3 (``vit_*_patch16_dinov3``, GramSR's condition) a timm ``Eva`` whose
blocks take the rotary position embedding. ``num_tokens`` (optional) resizes the token grid.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vosr.config import SemanticConfig

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
"""Seed of ``random_init`` encoders, so training and a later inference build the same weights."""


class SemanticEncoder(nn.Module):
    """Wraps a timm ViT truncated after ``block_index``; ``forward(lr_up01) -> (B, N, D)``."""

    dim: int
    num_tokens: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]

    def __init__(self, vit: nn.Module, block_index: int, input_size: int, num_tokens: int | None = None) -> None:
        super().__init__()
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        depth = len(vit.blocks)
        if not 0 <= block_index < depth:
            raise ValueError(f"semantic.block_index={block_index} is outside the encoder's {depth} blocks")
        patch = vit.patch_embed.patch_size[0]
        if input_size % patch:
            raise ValueError(f"semantic.input_size={input_size} is not a multiple of the patch size {patch}")
        vit.blocks = vit.blocks[:block_index + 1]  # later blocks are never used: drop their compute
        vit.norm = nn.Identity()
        vit.reset_classifier(0)
        self.vit = vit
        self.block_index = block_index
        self.input_size = input_size
        self.dim = vit.embed_dim
        self.grid = input_size // patch
        self.eva = getattr(vit, "rope", None) is not None or getattr(vit, "patch_drop", False) is None
        """timm ``Eva`` (DINOv3): ``_pos_embed`` returns the RoPE table the blocks take."""
        self.out_grid = self.grid
        if num_tokens is not None:
            side = int(round(num_tokens ** 0.5))
            if side * side != num_tokens or side < 1:
                raise ValueError(f"semantic.num_tokens={num_tokens} must be a square number (a token grid)")
            self.out_grid = side
        self.num_tokens = self.out_grid ** 2
        self.norm_mean = tuple(IMAGENET_DEFAULT_MEAN)  # plain floats: a bf16 cast of the module keeps them exact
        self.norm_std = tuple(IMAGENET_DEFAULT_STD)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SemanticEncoder:
        """Frozen: always stays in eval mode."""
        return super().train(False)

    def preprocess(self, lr_up01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> bicubic resize to (S, S) (antialiased) -> ImageNet-normalised."""
        size = (self.input_size, self.input_size)
        x = lr_up01.float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(self.norm_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.norm_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def forward(self, lr_up01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> patch tokens of block ``block_index`` (B, num_tokens, dim)."""
        vit = self.vit
        weight = vit.patch_embed.proj.weight
        x = self.preprocess(lr_up01.to(weight.device)).to(weight.dtype)
        x = vit.patch_embed(x)  # (B, N, D)
        if self.eva:
            x, rope = vit._pos_embed(x)  # (B, prefix + N, D), RoPE table (or per-block tables when mixed)
            x = vit.norm_pre(x)
            mixed = getattr(vit, "rope_mixed", False) and rope is not None
            for i, block in enumerate(vit.blocks):
                x = block(x, rope=rope[i] if mixed else rope)
        else:
            x = vit._pos_embed(x)  # (B, prefix + N, D): class/register tokens and position embedding
            x = vit.norm_pre(vit.patch_drop(x))
            for block in vit.blocks:
                x = block(x)
        tokens = x[:, vit.num_prefix_tokens:]  # (B, N, D)
        if self.out_grid == self.grid:
            return tokens
        grid = tokens.transpose(1, 2).unflatten(2, (self.grid, self.grid))  # (B, D, g, g)
        grid = F.interpolate(grid.float(), size=(self.out_grid,) * 2, mode="bilinear", align_corners=False,
                             antialias=self.out_grid < self.grid)
        return grid.flatten(2).transpose(1, 2).to(tokens.dtype)  # (B, num_tokens, D)


def block_features(encoder: SemanticEncoder, img01: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:
    """Patch-token features (B, N, D) after each of ``blocks`` (indices <= ``block_index``), with gradients
    flowing back into ``img01`` (B, 3, H, W) in [0, 1] (the encoder's own weights stay frozen)."""
    vit = encoder.vit
    if not blocks or max(blocks) >= len(vit.blocks) or min(blocks) < 0:
        raise ValueError(f"encoder blocks {blocks} must lie in [0, {len(vit.blocks) - 1}] (semantic.block_index)")
    weight = vit.patch_embed.proj.weight
    x = encoder.preprocess(img01.to(weight.device)).to(weight.dtype)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    wanted, out = set(blocks), {}
    for i, block in enumerate(vit.blocks[:max(blocks) + 1]):
        x = block(x)
        if i in wanted:
            out[i] = x[:, vit.num_prefix_tokens:]
    return [out[i] for i in blocks]


def build_semantic_encoder(cfg: SemanticConfig) -> SemanticEncoder | None:
    """Build the frozen encoder from local weights (or seeded random weights); None for kind=none."""
    if cfg.kind == "none":
        return None
    import timm

    kwargs = dict(img_size=cfg.input_size, **cfg.timm_kwargs)
    if cfg.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            vit = timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
        logger.warning("semantic encoder %s has RANDOM weights (semantic.random_init=true)", cfg.timm_name)
    else:
        if cfg.path is None or not Path(cfg.path).expanduser().is_file():
            raise FileNotFoundError(f"semantic.path={cfg.path} is not a file; set semantic.path to local "
                                    f"{cfg.timm_name} weights (.safetensors/.pth), weights are never downloaded")
        path = str(Path(cfg.path).expanduser())
        vit = timm.create_model(cfg.timm_name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
        logger.info("semantic encoder %s loaded from %s", cfg.timm_name, path)
    return SemanticEncoder(vit, cfg.block_index, cfg.input_size, getattr(cfg, "num_tokens", None))
