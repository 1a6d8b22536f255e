"""Frozen latent autoencoders with one interface: images in [0, 1] <-> normalised latents.

``PixelSpace`` (no weights), ``DiffusersVAE`` for the SD-2.1 VAE (optionally with the
released light decoder) and the Qwen-Image VAE used frame-by-frame in 2-D (METHOD.md §2).
Weights come only from local paths; nothing is downloaded.
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vosr.config import AutoencoderConfig
from vosr.models.weights import read_state_dict

logger = logging.getLogger(__name__)


def sd21_vae_config() -> dict:
    """diffusers ``AutoencoderKL`` config of the SD-2.1 VAE (used for bare .safetensors files)."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 768, "scaling_factor": 0.18215}


def light_decoder_config(latent_channels: int) -> dict:
    """diffusers ``Decoder`` config of the released 0.5B light decoder (64/128/256/256, no post-quant conv)."""
    return {"in_channels": latent_channels, "out_channels": 3, "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "norm_num_groups": 32}


class Autoencoder(nn.Module, abc.ABC):
    """Frozen image <-> latent map. Images are (B, 3, H, W) in [0, 1]; latents are normalised."""

    latent_channels: int
    downsample: int

    def freeze(self) -> None:
        """No gradients to the weights and permanent eval mode."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Autoencoder:
        """Frozen: always stays in eval mode."""
        return super().train(False)

    def check_size(self, img01: torch.Tensor, key: str = "data.crop_size") -> None:
        """Raise ValueError when H or W is not a multiple of ``downsample``."""
        h, w = img01.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w} is not a multiple of the autoencoder's downsampling "
                             f"{self.downsample}; change {key} (or pad the image)")

    @abc.abstractmethod
    def encode(self, img01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> latent (B, latent_channels, H / downsample, W / downsample).

        With ``generator`` a stochastic autoencoder draws from its posterior (training, as the
        reference does); without, it returns the posterior mean (inference, validation).
        """

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, latent_channels, h, w) -> image (B, 3, h * downsample, w * downsample) in [0, 1]."""


class PixelSpace(Autoencoder):
    """No autoencoder: latent = space-to-depth(2 * img - 1) by ``unshuffle`` (3 * unshuffle^2 channels)."""

    def __init__(self, unshuffle: int = 1) -> None:
        super().__init__()
        if unshuffle < 1:
            raise ValueError(f"autoencoder.pixel_unshuffle must be >= 1, got {unshuffle}")
        self.latent_channels = 3 * unshuffle * unshuffle
        self.downsample = unshuffle
        self.freeze()

    def encode(self, img01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_size(img01, "autoencoder.pixel_unshuffle (or the image size)")
        return F.pixel_unshuffle(img01 * 2 - 1, self.downsample)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latent, self.downsample) + 1) / 2).clamp(0, 1)


class DiffusersVAE(Autoencoder):
    """A diffusers KL autoencoder: SD-style (``AutoencoderKL``) or Qwen-Image (frame dim added).

    latent = (mean of the posterior - shift) * scale for SD, (mean - mu_c) / sigma_c (x scale)
    per channel for Qwen-Image; ``decoder`` optionally replaces the VAE's own decoder.
    """

    def __init__(self, vae: nn.Module, *, video: bool, scaling_factor: float | None = None,
                 decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.video = video
        self.decoder = decoder
        config = vae.config
        if video:
            channels = config.z_dim
            self.downsample = 2 ** len(config.temperal_downsample)
            mean = torch.tensor(config.latents_mean, dtype=torch.float32)
            std = torch.tensor(config.latents_std, dtype=torch.float32)
            scale = scaling_factor if scaling_factor is not None else 1.0
        else:
            channels = config.latent_channels
            self.downsample = 2 ** (len(config.block_out_channels) - 1)
            mean = torch.full((channels,), float(config.shift_factor or 0.0))
            std = torch.ones(channels)
            scale = scaling_factor if scaling_factor is not None else config.scaling_factor
        self.latent_channels = channels
        # per-channel affine: latent = (sample - shift) * gain
        self.register_buffer("shift", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("gain", (scale / std).view(1, -1, 1, 1), persistent=False)
        self.freeze()

    @torch.no_grad()
    def encode(self, img01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_size(img01)
        x = (img01.to(self.shift.device).float() * 2 - 1).to(self._dtype())
        x = x[:, :, None] if self.video else x  # (B, 3, 1, H, W) for the video VAE
        posterior = self.vae.encode(x).latent_dist
        sample = posterior.mean if generator is None else posterior.sample(generator=generator)
        sample = sample[:, :, 0] if self.video else sample
        return (sample.float() - self.shift.float()) * self.gain.float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        sample = (latent.float() / self.gain.float() + self.shift.float()).to(self._dtype())
        if self.decoder is not None:
            img = self.decoder(sample)
        elif self.video:
            img = self.vae.decode(sample[:, :, None]).sample[:, :, 0]
        else:
            img = self.vae.decode(sample).sample
        return ((img.float() + 1) / 2).clamp(0, 1)

    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------


def _existing(path: str, key: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{key}={path} does not exist; set {key} to a local diffusers folder "
                                "or .safetensors file (weights are never downloaded)")
    return resolved


def _load_vae(cls: type, path: Path, default_config: dict | None) -> nn.Module:
    """A diffusers VAE from a folder (``from_pretrained``, also ``<folder>/vae``) or a bare state dict."""
    if path.is_dir():
        sub = "vae" if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file() else None
        return cls.from_pretrained(str(path), subfolder=sub, local_files_only=True)
    config_file = path.with_name("config.json")
    config = cls.load_config(str(config_file)) if config_file.is_file() else (default_config or {})
    model = cls.from_config(config)
    state = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"autoencoder.path={path} is not a diffusers-format {cls.__name__} state dict "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]}); convert it or point "
                         "autoencoder.path at a diffusers folder")
    return model


def _load_light_decoder(path: Path, latent_channels: int) -> nn.Module:
    """The released light decoder (diffusers ``Decoder`` keys, an optional ``decoder.`` prefix)."""
    from diffusers.models.autoencoders.vae import Decoder

    decoder = Decoder(**light_decoder_config(latent_channels))
    state = read_state_dict(path)
    if any(k.startswith("decoder.") for k in state):
        state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"autoencoder.decoder_path={path} does not hold a 64/128/256/256 decoder "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return decoder


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """Build the frozen autoencoder ``cfg.kind`` from local weights."""
    if cfg.kind == "pixel":
        return PixelSpace(cfg.pixel_unshuffle)
    if cfg.path is None:
        raise ValueError(f"autoencoder.path is required for autoencoder.kind={cfg.kind}")
    path = _existing(cfg.path, "autoencoder.path")
    import diffusers

    if cfg.kind == "qwen_image":
        cls = getattr(diffusers, "AutoencoderKLQwenImage", None)
        if cls is None:
            raise ValueError(f"autoencoder.kind=qwen_image needs diffusers with AutoencoderKLQwenImage "
                             f"(installed: {diffusers.__version__}); upgrade diffusers or change autoencoder.kind")
        vae = _load_vae(cls, path, None)
        ae = DiffusersVAE(vae, video=True, scaling_factor=cfg.scaling_factor)
    else:
        vae = _load_vae(diffusers.AutoencoderKL, path, sd21_vae_config())
        decoder = None
        if cfg.decoder_path is not None:
            decoder_file = _existing(cfg.decoder_path, "autoencoder.decoder_path")
            decoder = _load_light_decoder(decoder_file, vae.config.latent_channels)
        ae = DiffusersVAE(vae, video=False, scaling_factor=cfg.scaling_factor, decoder=decoder)
    logger.info("autoencoder %s from %s: %d latent channels, /%d", cfg.kind, path, ae.latent_channels,
                ae.downsample)
    return ae
