"""The super-resolution pipeline (METHOD.md §6): LR -> bicubic up -> encode -> sample -> decode.

``load_pipeline`` rebuilds the transformer, autoencoder and semantic encoder from an export
(``vosr.training.export``) or a released checkpoint plus a config, and ``SRPipeline.upscale`` runs:
bicubic upsampling by the scale, 8-bit quantisation, reflect-padding to the latent/patch grid,
(tiled) encoding, per-tile semantic tokens, a one-step or Euler solve from one full-size noise
field (the transformer tiled per step), (tiled) decoding, cropping, optional colour fix.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vosr.config import RunConfig, apply_overrides, from_dict, load_run_config, to_dict
from vosr.images import resize_bicubic
from vosr.inference.colorfix import apply_color_fix
from vosr.inference.tiling import OnTiles, TiledDenoiser, TileGrid, make_grid, tiled_apply
from vosr.method.distill import default_omega
from vosr.method.flow import gradient_keep_map, inference_keep_map, randn, sample_euler, sample_student, spherical_noise
from vosr.models.autoencoder import Autoencoder, build_autoencoder
from vosr.models.conditioning import lr_unshuffle_factor
from vosr.models.dit import VOSRDiT, build_dit
from vosr.models.semantic import SemanticEncoder, build_semantic_encoder
from vosr.models.weights import load_vosr_weights, read_state_dict
from vosr.training.export import OMEGA_EMBEDDER_PREFIX, export_file, load_export, read_guidance_range

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TileOptions:
    """Tiling of the transformer and the autoencoder; sizes are pixels of the upscaled image."""

    tile: int | None = None
    """Transformer tile side; None = the training crop (data.crop_size); 0 = never tile."""
    overlap: int | None = None
    """Transformer tile overlap; None = tile / 4."""
    ae_tile: int | None = None
    """Encoder/decoder tile side; None = autoencoder.tile_size; 0 = never tile."""
    ae_overlap: int | None = None
    """Encoder/decoder tile overlap; None = autoencoder.tile_overlap."""
    batch: int = 4
    """Tiles per forward pass (memory grows with it)."""


@dataclass(frozen=True)
class SampleOptions:
    """Sampler settings resolved from the config defaults and the caller's choices."""

    student: bool
    """A distilled student (chain of average velocities, no guidance) rather than the guided teacher."""
    steps: int
    guidance: float | None
    """Teacher: the guidance s, or the LR branch's s_lr when ``guidance_sem`` is set."""
    weak_anchor: float | None
    guidance_sem: float | None = None
    """Teacher: the semantic branch's s_sem when it differs from ``guidance`` (per-branch guidance)."""
    omega: float | None = None
    """Guidance-conditioned student: the omega it samples at (inside its distilled range)."""


class SRPipeline:
    """A loaded VOSR model with its autoencoder and semantic encoder, ready to upscale images."""

    model: VOSRDiT
    autoencoder: Autoencoder
    semantic: SemanticEncoder | None
    config: RunConfig
    scale: int
    device: torch.device
    dtype: torch.dtype

    def __init__(self, model: VOSRDiT, autoencoder: Autoencoder, semantic: SemanticEncoder | None,
                 config: RunConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.autoencoder = autoencoder.to(self.device)  # kept in fp32 for decoding quality
        self.semantic = None if semantic is None else semantic.to(self.device, dtype)
        self.config = config
        self.scale = config.data.scale
        self.cuda_graphs = False
        """Batch-1 one-step upscales of one tile replay a captured CUDA graph (``compile``; CUDA only)."""
        self.graphs: dict = {}

    def compile(self, *, backend: str = "inductor", mode: str | None = None, cuda_graphs: bool | None = None) -> None:
        """``torch.compile`` the transformer and encoders (once per shape); see ``vosr.inference.fast``."""
        from vosr.inference.fast import compile_pipeline

        compile_pipeline(self, backend=backend, mode=mode, cuda_graphs=cuda_graphs)

    @property
    def multiple(self) -> int:
        """Upscaled images are padded to a multiple of this (autoencoder downsampling x patch size)."""
        return self.autoencoder.downsample * self.model.cfg.patch_size

    @property
    def guidance_range(self) -> list[float] | None:
        """``[lo, hi]`` of a guidance-conditioned student (``distill.guidance_range`` of its weights), else None."""
        if not getattr(self.model.cfg, "with_omega", False):
            return None
        return self.config.distill.guidance_range

    def sample_options(self, steps: int | None, guidance: float | None, weak_anchor: float | None, *,
                       guidance_lr: float | None = None, guidance_sem: float | None = None) -> SampleOptions:
        """A student (a model with the ``r`` input) samples in ``steps`` (default 1) average-velocity steps
        without guidance, as the reference does; a teacher runs guided Euler (default flow.sample_steps).

        A teacher's ``guidance_lr`` / ``guidance_sem`` override ``guidance`` (default flow.guidance) per
        branch. A guidance-conditioned student takes ``guidance`` as its omega, inside the range stored in
        its weights (default distill.guidance, or the range's middle when that lies outside).
        Raises ValueError for a knob the model cannot honour (it would silently do nothing), or an omega
        outside the stored range.
        """
        flow = self.config.flow
        student = self.model.cfg.with_r
        if student and (guidance_lr is not None or guidance_sem is not None):
            raise ValueError("--guidance-lr/--guidance-sem apply to multi-step teachers only (per-branch guidance); "
                             "this is a distilled student")
        omega_range = self.guidance_range if student else None
        if student and omega_range is not None:
            if weak_anchor is not None:
                raise ValueError("--weak-anchor applies to multi-step teachers only; this student takes --guidance "
                                 f"in its distilled range {format_range(omega_range)}")
            omega = guidance if guidance is not None else default_omega(self.config.distill.guidance, omega_range)
            check_omega(omega, omega_range)
        elif student and (guidance is not None or weak_anchor is not None):
            raise ValueError(f"this is a distilled student: its guidance was fixed at distillation "
                             f"(distill.guidance={self.config.distill.guidance}); --guidance/--weak-anchor apply to "
                             "multi-step teachers and to students distilled with distill.guidance_range only")
        steps = steps if steps is not None else (1 if student else flow.sample_steps)
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1 (--steps / flow.sample_steps)")
        if student:
            return SampleOptions(student=True, steps=steps, guidance=None, weak_anchor=None,
                                 omega=None if omega_range is None else float(omega))
        base = flow.guidance if guidance is None else guidance
        s_lr = base if guidance_lr is None else guidance_lr
        s_sem = base if guidance_sem is None else guidance_sem
        return SampleOptions(student=False, steps=steps, guidance=s_lr,
                             weak_anchor=flow.weak_anchor if weak_anchor is None else weak_anchor,
                             guidance_sem=None if s_sem == s_lr else s_sem)

    def prepare(self, lr01: Tensor, scale: float | None = None) -> Tensor:
        """LR (B, 3, h, w) in [0, 1] -> (B, 3, h*s, w*s) upsampled by PIL's bicubic in 8 bits, as the reference."""
        if lr01.ndim != 4 or lr01.shape[1] != 3:
            raise ValueError(f"upscale expects an RGB batch (B, 3, h, w), got {tuple(lr01.shape)}")
        s = self.scale if scale is None else scale
        size = (int(round(lr01.shape[-2] * s)), int(round(lr01.shape[-1] * s)))
        return resize_bicubic(lr01.float().clamp(0, 1).cpu(), size).to(self.device)

    @torch.no_grad()
    def upscale(self, lr01: Tensor, *, steps: int | None = None, guidance: float | None = None,
                weak_anchor: float | None = None, seed: int = 0, tiles: TileOptions | None = None,
                color_fix: str = "adain", scale: float | None = None, progress: bool | str = False,
                guidance_lr: float | None = None, guidance_sem: float | None = None,
                degradation: Tensor | None = None, cond_noise: float = 0.0) -> Tensor:
        """Super-resolve ``lr01`` (B, 3, h, w) in [0, 1] -> (B, 3, h*s, w*s) in [0, 1] (float32, CPU).

        ``seed`` fixes the noise field (drawn once at full size on the CPU, so results do not
        depend on the device or the tiling); ``scale`` defaults to the model's training scale.
        ``progress`` (True, or the bar's label) shows one bar over the tiles of every stage and step.
        ``degradation`` (K,) or (B, K) scores in [0, 1] for a model with ``model.degradation_condition``
        (default: its estimator's, else none); ``cond_noise`` in [0, 1] applies the region-adaptive condition
        noise map (``flow.cond_noise_a_min/max``) at that strength to the LQ latent (0 = off).
        """
        tiles = tiles or TileOptions()
        opts = self.sample_options(steps, guidance, weak_anchor, guidance_lr=guidance_lr, guidance_sem=guidance_sem)
        lr_up = self.prepare(lr01, scale)  # (B, 3, H, W)
        height, width = lr_up.shape[-2:]
        padded = pad_to_multiple(lr_up, self.multiple)
        if self.cuda_graphs:
            out = self._graph_upscale(padded, tiles, opts, seed)
            if out is not None:
                return apply_color_fix(out[..., :height, :width].clamp(0, 1), lr_up, color_fix).float().cpu()
        bar = self._progress_bar(padded, tiles, opts.steps, progress)
        z_lq = self.encode(padded, tiles, bar.update).to(self.dtype)  # (B, C, H/d, W/d)
        grid = self.latent_grid(tuple(z_lq.shape[-2:]), tiles)
        sem = self.tile_semantics(padded, grid, tiles.batch, bar.update)  # (B, T, N, D) or None
        generator = torch.Generator().manual_seed(seed)
        noise = randn(tuple(z_lq.shape), generator, self.device).to(self.dtype)
        if cond_noise > 0:
            flow = self.config.flow
            keep = inference_keep_map(gradient_keep_map(padded, tuple(z_lq.shape[-2:]), flow.cond_noise_a_min,
                                                        flow.cond_noise_a_max), cond_noise)
            z_lq = spherical_noise(z_lq, keep, randn(tuple(z_lq.shape), generator, self.device).to(self.dtype))
        scores = self.degradation_scores(degradation, sem, z_lq.shape[0])
        lr_pixels = padded.to(self.dtype) if self.model.lr_branch is not None else None
        denoiser = TiledDenoiser(self.model, grid, tiles.batch, on_tiles=bar.update, lr_pixels=lr_pixels,
                                 pixel_scale=self.autoencoder.downsample, degradation=scores)
        if opts.student:
            z_hq = sample_student(denoiser, z_lq, sem, noise, steps=opts.steps, omega=opts.omega)
        else:
            z_hq = sample_euler(denoiser, z_lq, sem, noise, steps=opts.steps, guidance=opts.guidance,
                                weak_anchor=opts.weak_anchor, guidance_sem=opts.guidance_sem)
        out = self.decode(z_hq.float(), tiles, bar.update)[..., :height, :width].clamp(0, 1)
        bar.close()
        return apply_color_fix(out, lr_up, color_fix).float().cpu()

    def _graph_upscale(self, padded: Tensor, tiles: TileOptions, opts: SampleOptions, seed: int) -> Tensor | None:
        """The CUDA-graph path (``vosr.inference.fast``) when it applies, else None: decoded (1, 3, H, W)."""
        from vosr.inference.fast import can_use_graph, graph_for

        d = self.autoencoder.downsample
        latent_hw = (padded.shape[-2] // d, padded.shape[-1] // d)
        single = len(self.latent_grid(latent_hw, tiles)) == 1 and self._ae_grid(latent_hw, tiles) is None
        if not can_use_graph(self, padded, student=opts.student, steps=opts.steps, single_tile=single):
            return None
        shape = (padded.shape[0], self.autoencoder.latent_channels, *latent_hw)
        noise = randn(shape, torch.Generator().manual_seed(seed), self.device).to(self.dtype)
        return graph_for(self, padded, noise)(padded, noise)

    def degradation_scores(self, given: Tensor | None, sem: Tensor | None, batch: int) -> Tensor | None:
        """Scores (B, K) for the degradation embedding: ``given``, else the estimator's on the tiles' semantic
        tokens (averaged over tiles), else None (the model then runs as trained with dropped scores)."""
        if self.model.degradation_embed is None:
            if given is not None:
                raise ValueError("--degradation was given, but this model has no degradation conditioning "
                                 "(model.degradation_condition=false)")
            return None
        if given is not None:
            k = self.model.cfg.degradation_scores
            given = given.to(self.device, self.dtype).reshape(-1, k)
            return given.expand(batch, k) if given.shape[0] == 1 else given
        if self.model.degradation_head is None or sem is None:
            return None
        est = self.model.estimate_degradation(sem.flatten(0, 1))  # (B*T, K)
        return est.unflatten(0, sem.shape[:2]).mean(1)  # (B, K)

    def _progress_bar(self, padded: Tensor, tiles: TileOptions, steps: int, progress: bool | str):
        """A tqdm bar over every tile pass of one upscale: encode, semantic tokens, each step, decode."""
        from tqdm.auto import tqdm

        d = self.autoencoder.downsample
        latent_hw = (padded.shape[-2] // d, padded.shape[-1] // d)
        ae_grid, grid = self._ae_grid(latent_hw, tiles), self.latent_grid(latent_hw, tiles)
        total = 2 * (len(ae_grid) if ae_grid else 1) + len(grid) * (steps + (self.semantic is not None))
        return tqdm(total=total, desc=progress if isinstance(progress, str) else "upscale", unit="tile",
                    disable=not progress, leave=False)

    # -- stages -------------------------------------------------------------------------

    def encode(self, img01: Tensor, tiles: TileOptions, on_tiles: OnTiles | None = None) -> Tensor:
        """(B, 3, H, W) -> latent (B, C, H/d, W/d), tiled over ``ae_tile`` pixels."""
        d = self.autoencoder.downsample
        tile, overlap = self._ae_tile(tiles)
        if not tile or max(img01.shape[-2:]) <= tile * d:
            z = self.autoencoder.encode(img01).float()
            if on_tiles is not None:
                on_tiles(1)
            return z
        grid = make_grid(img01.shape[-2], img01.shape[-1], tile * d, overlap * d, align=d)
        return tiled_apply(lambda x, _: self.autoencoder.encode(x).float(), img01, grid,
                           scale=1 / d, batch=tiles.batch, on_tiles=on_tiles)

    def decode(self, latent: Tensor, tiles: TileOptions, on_tiles: OnTiles | None = None) -> Tensor:
        """latent (B, C, h, w) -> image (B, 3, h*d, w*d), tiled over ``ae_tile`` pixels."""
        grid = self._ae_grid(tuple(latent.shape[-2:]), tiles)
        if grid is None:
            image = self.autoencoder.decode(latent).float()
            if on_tiles is not None:
                on_tiles(1)
            return image
        return tiled_apply(lambda z, _: self.autoencoder.decode(z).float(), latent, grid,
                           scale=self.autoencoder.downsample, batch=tiles.batch, on_tiles=on_tiles)

    def latent_grid(self, size: tuple[int, int], tiles: TileOptions) -> TileGrid:
        """Transformer tiles on the latent plane, aligned to the patch size."""
        d, p = self.autoencoder.downsample, self.model.cfg.patch_size
        tile_px = self.config.data.crop_size if tiles.tile is None else tiles.tile
        if tile_px == 0:
            return make_grid(size[0], size[1], max(size), 0, align=p)
        tile = max(p, tile_px // d // p * p)
        overlap_px = tile_px // 4 if tiles.overlap is None else tiles.overlap
        return make_grid(size[0], size[1], tile, min(overlap_px // d, tile - p), align=p)

    def tile_semantics(self, padded: Tensor, grid: TileGrid, batch: int,
                       on_tiles: OnTiles | None = None) -> Tensor | None:
        """Semantic tokens of each tile's upsampled-LR pixels: (B, T, N, D), or None without an encoder."""
        if self.semantic is None:
            return None
        d = self.autoencoder.downsample
        per_tile = []
        for start in range(0, len(grid), batch):
            boxes = grid.boxes[start:start + batch]
            crops = torch.cat([padded[:, :, y0 * d:y1 * d, x0 * d:x1 * d] for (y0, y1, x0, x1) in boxes])
            tokens = self.semantic(crops.to(self.dtype))  # (k*B, N, D)
            per_tile.append(tokens.unflatten(0, (len(boxes), padded.shape[0])))  # (k, B, N, D)
            if on_tiles is not None:
                on_tiles(len(boxes))
        return torch.cat(per_tile).transpose(0, 1).to(self.dtype)  # (B, T, N, D)

    def _ae_grid(self, latent_hw: tuple[int, int], tiles: TileOptions) -> TileGrid | None:
        """Encoder/decoder tiles on the latent plane; None when one pass covers it."""
        tile, overlap = self._ae_tile(tiles)
        if not tile or max(latent_hw) <= tile:
            return None
        return make_grid(latent_hw[0], latent_hw[1], tile, overlap)

    def _ae_tile(self, tiles: TileOptions) -> tuple[int, int]:
        """Autoencoder tile and overlap in latent pixels (0 tile = no tiling)."""
        d, ae = self.autoencoder.downsample, self.config.autoencoder
        tile_px = ae.tile_size if tiles.ae_tile is None else tiles.ae_tile
        overlap_px = ae.tile_overlap if tiles.ae_overlap is None else tiles.ae_overlap
        if tile_px == 0:
            return 0, 0
        tile = max(1, tile_px // d)
        return tile, min(overlap_px // d, tile - 1)


def format_range(bounds: list[float]) -> str:
    """``[lo, hi]`` as users type it."""
    return f"[{bounds[0]:g}, {bounds[1]:g}]"


def check_omega(omega: float, bounds: list[float]) -> None:
    """ValueError naming the stored range when ``omega`` lies outside it."""
    if not bounds[0] <= omega <= bounds[1]:
        raise ValueError(f"--guidance {omega:g} is outside {format_range(bounds)}, the guidance range this student "
                         "was distilled over (distill.guidance_range, stored in its weights)")


def pad_to_multiple(img: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, H, W) on the bottom/right to multiples of ``multiple`` (reflect, replicate if too small)."""
    h, w = img.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(img, (0, pw, 0, ph), mode=mode)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def resolve_config(embedded: RunConfig | None, config: str | None, overrides: tuple[str, ...] | list[str]) -> RunConfig:
    """``config`` (YAML) if given, else the export's embedded config; ``overrides`` apply on top."""
    if config is not None:
        return load_run_config(config, list(overrides))
    if embedded is None:
        raise ValueError("the checkpoint carries no vosr_config metadata (a released checkpoint); "
                         "pass --config with the matching run YAML")
    if not overrides:
        return embedded
    return from_dict(RunConfig, apply_overrides(to_dict(embedded), list(overrides)))


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Tensor], RunConfig | None]:
    """State dict and embedded config of an export (``.safetensors``, or a run folder holding its
    ``ema.safetensors``) or of any state-dict file."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = export_file(path)
    if path.suffix == ".safetensors":
        return load_export(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (-c/--checkpoint)")
    return read_state_dict(path), None


def _with_stored_guidance_range(cfg: RunConfig, state: dict[str, Tensor], checkpoint: str | Path) -> RunConfig:
    """Follow the weights: ``model.with_omega`` when they have an ``omega_embedder``, and the omega range
    stored in the export's metadata (over whatever a --config says)."""
    has_omega = any(k.startswith(OMEGA_EMBEDDER_PREFIX) for k in state)
    path = Path(checkpoint).expanduser()
    path = export_file(path) if path.is_dir() else path
    stored = read_guidance_range(path) if has_omega and path.suffix == ".safetensors" else None
    bounds = stored if stored is not None else cfg.distill.guidance_range
    if has_omega and bounds is None:
        raise ValueError(f"checkpoint {checkpoint} has a guidance input (omega_embedder) but no guidance range; "
                         "pass --set distill.guidance_range=[lo,hi] as it was distilled")
    if has_omega == cfg.model.with_omega and bounds == cfg.distill.guidance_range:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, with_omega=has_omega),
                               distill=dataclasses.replace(cfg.distill, guidance_range=bounds))


def load_pipeline(checkpoint: str | Path, *, config: str | None = None, overrides: tuple[str, ...] | list[str] = (),
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SRPipeline:
    """Build the full pipeline from ``checkpoint`` (an export, or released weights + ``config``)."""
    state, embedded = read_checkpoint(checkpoint)
    cfg = resolve_config(embedded, config, overrides)
    has_r = any(k.startswith("r_embedder.") for k in state)
    if has_r != cfg.model.with_r:
        logger.warning("checkpoint %s r_embedder weights; using model.with_r=%s (config said %s)",
                       "has" if has_r else "lacks", has_r, cfg.model.with_r)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, with_r=has_r))
    cfg = _with_stored_guidance_range(cfg, state, checkpoint)
    autoencoder = build_autoencoder(cfg.autoencoder)
    semantic = build_semantic_encoder(cfg.semantic)
    model = build_dit(cfg.model, latent_channels=autoencoder.latent_channels,
                      semantic_dim=None if semantic is None else semantic.dim,
                      input_size=max(cfg.model.patch_size, cfg.data.crop_size // autoencoder.downsample),
                      lr_unshuffle=lr_unshuffle_factor(autoencoder.downsample * cfg.model.patch_size, cfg.data.scale))
    load_vosr_weights(model, state, strict=True)
    logger.info("loaded %s: preset=%s with_r=%s scale=%d", checkpoint, cfg.model.preset, has_r, cfg.data.scale)
    return SRPipeline(model, autoencoder, semantic, cfg, device=device, dtype=dtype)
