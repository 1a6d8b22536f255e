"""Batched second-order Real-ESRGAN degradation (METHOD.md §1; Wang et al., ICCV-W 2021).

HR batch -> [blur -> random resize -> noise -> JPEG] -> [blur -> random resize -> noise] ->
random order of {resize to HR/scale + final sinc} and {JPEG} -> clamp, quantise to 8 bits. The
resize back to the HR grid starts from the float LR and is quantised after it, as the reference's.
JPEG is the reference's hard-rounding codec (``vosr.data.jpeg``).
Every kernel, factor, noise level and quality is drawn per image. Blur is one grouped
convolution over the batch; noise and JPEG run on the whole batch (or the subset an
option applies to). After a random resize the images differ in size, so the batch is kept
as a canvas padded (edge-replicated) to the largest image, with each image's valid size
alongside; the per-image resizes loop over the batch (B small interpolations).
Parameter draws use the CPU generator; noise uses a generator on the batch's device seeded
from it, so a given generator state reproduces the batch exactly on a given device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vosr.config.degradation import RESIZE_MODES, BlurConfig, DegradationConfig, JpegConfig, NoiseConfig, ResizeConfig
from vosr.data.jpeg import jpeg_compress
from vosr.data.kernels import choice, sample_blur_kernels, sample_final_sinc_kernels, uniform

Sizes = list[tuple[int, int]]
# Images grouped for one batched call on the CPU are at least this fraction of the group's
# largest area (an efficiency knob only: it bounds the work spent on canvas padding to 2x).
# On accelerators kernel launches, not pixels, dominate, so every image goes in one group.
_CPU_GROUP_AREA_RATIO = 0.5


@dataclass
class DegradedPair:
    """A degraded batch: the LR image and its resize back to the HR grid, both multiples of 1/255."""

    lr: Tensor
    """(B, 3, H/s, W/s) float in [0, 1]."""
    lr_up: Tensor
    """(B, 3, H, W) float in [0, 1]."""
    scores: Tensor | None = None
    """(B, len(SCORE_NAMES)) the drawn parameters of each image normalised to [0, 1] (0 = that step did not
    degrade the image; see ``SCORE_NAMES``)."""


SCORE_NAMES = ("blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2", "jpeg2")
"""Degradation scores in [0, 1], per stage: ``blur`` the blur kernel's standard deviation / the config's largest
sigma; ``resize`` the log resize factor mapped from [smallest, largest] to [0, 1] (1x = the middle of the range
in log scale; unresized images get the score of 1x); ``noise`` the Gaussian sigma (or Poisson scale) / its
config maximum; ``jpeg`` (100 - quality) / (100 - lowest quality), 0 when not compressed."""
SCORE_GROUPS = {"blur": ("blur1", "blur2"), "resize": ("resize1", "resize2"), "noise": ("noise1", "noise2"),
                "jpeg": ("jpeg1", "jpeg2")}
"""User-facing names (``vosr.infer --degradation noise=0.3,blur=0.5,jpeg=0.2``) setting both stages at once."""


def kernel_width(kernels: Tensor) -> Tensor:
    """Standard deviation (pixels, per axis) of each (B, K, K) blur kernel's magnitude about its centre (sinc
    kernels' negative lobes count by their size); 0 for a pulse."""
    k = kernels.shape[-1]
    pos = torch.arange(k, dtype=torch.float32) - k // 2
    r2 = pos[:, None] ** 2 + pos[None, :] ** 2  # (K, K)
    mag = kernels.float().cpu().abs()
    var = (mag * r2).sum(dim=(-2, -1)) / mag.sum(dim=(-2, -1)).clamp_min(1e-12) / 2
    return var.sqrt()


def blur_score(kernels: Tensor, blurred: Tensor, cfg: BlurConfig) -> Tensor:
    """(B,) kernel width / the largest sigma of ``cfg``, 0 where not ``blurred``, clamped to [0, 1]."""
    width = kernel_width(kernels) / max(cfg.sigma[1], 1e-6)
    return torch.where(blurred.cpu(), width, torch.zeros_like(width)).clamp(0, 1)


def resize_score(factor: Tensor, cfg: ResizeConfig) -> Tensor:
    """(B,) ``log f`` mapped from [log lo, log hi] (lo <= 1 <= hi, the config's range) to [0, 1]."""
    lo, hi = min(1.0, cfg.scale_range[0]), max(1.0, cfg.scale_range[1])
    if hi <= lo:
        return torch.zeros_like(factor)
    lo_t, hi_t = torch.log(torch.tensor(lo)), torch.log(torch.tensor(hi))
    return ((torch.log(factor.clamp_min(1e-6)) - lo_t) / (hi_t - lo_t)).clamp(0, 1)


def noise_score(draw: NoiseDraw, cfg: NoiseConfig) -> Tensor:
    """(B,) Gaussian sigma / max sigma, or Poisson scale / max scale; 0 where no noise was added."""
    poisson = draw.kind >= 2
    level = draw.level.float() * 255.0 / max(cfg.sigma[1], 1e-6)
    level = torch.where(poisson, draw.level.float() / max(cfg.poisson_scale[1], 1e-6), level)
    return torch.where(draw.kind >= 0, level, torch.zeros_like(level)).clamp(0, 1)


def jpeg_score(quality: Tensor, compressed: Tensor, cfg: JpegConfig) -> Tensor:
    """(B,) (100 - quality) / (100 - lowest quality); 0 where not compressed."""
    score = (100.0 - quality.float()) / max(100.0 - cfg.quality[0], 1e-6)
    return torch.where(compressed.cpu(), score, torch.zeros_like(score)).clamp(0, 1)


def parse_scores(text: str) -> Tensor:
    """``"noise=0.3,blur=0.5,jpeg=0.2"`` -> (len(SCORE_NAMES),) scores; names of ``SCORE_GROUPS`` set both stages,
    ``SCORE_NAMES`` one; unnamed scores are 0 (that degradation absent)."""
    scores = dict.fromkeys(SCORE_NAMES, 0.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or (name not in SCORE_GROUPS and name not in SCORE_NAMES):
            raise ValueError(f"--degradation item {item!r}: expected NAME=VALUE with NAME one of "
                             f"{sorted(SCORE_GROUPS)} or {list(SCORE_NAMES)}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--degradation {name}={value!r}: the value must be a number in [0, 1]") from None
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"--degradation {name}={v}: scores lie in [0, 1]")
        for key in SCORE_GROUPS.get(name, (name,)):
            scores[key] = v
    return torch.tensor([scores[k] for k in SCORE_NAMES], dtype=torch.float32)


def quantise(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the nearest multiple of 1/255 (an 8-bit image)."""
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def _interpolate(x: Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> Tensor:
    """``F.interpolate`` to ``size``; ``antialias`` only applies to bilinear/bicubic."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def upsample_lr(lr: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize ``lr`` (B, 3, h, w) to ``size`` with ``mode`` (area/bilinear/bicubic); clamped and quantised."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"upsample mode must be one of {RESIZE_MODES}, got {mode!r}")
    return quantise(_interpolate(lr, size, mode))


def downsample_bicubic(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downscale of ``hr`` (B, 3, H, W) by ``scale`` (the bicubic protocol); quantised."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale={scale}; change data.crop_size")
    return quantise(_interpolate(hr, (h // scale, w // scale), "bicubic", antialias=True))


def filter2d(x: Tensor, kernels: Tensor) -> Tensor:
    """Blur each image of ``x`` (B, C, H, W) with its own kernel (B, K, K): one grouped convolution."""
    support = kernels.abs().sum(0) > 0
    k = kernels.shape[-1]
    radius = int(max((torch.nonzero(support) - k // 2).abs().max().item(), 0))
    if radius == 0:  # all pulses (or all images unblurred): nothing to do
        return x
    kernels = kernels[:, k // 2 - radius:k // 2 + radius + 1, k // 2 - radius:k // 2 + radius + 1]
    b, c, h, w = x.shape
    mode = "reflect" if radius < min(h, w) else "replicate"
    padded = F.pad(x, (radius,) * 4, mode=mode)
    weight = kernels.to(x).repeat_interleave(c, dim=0)[:, None]  # (B*C, 1, k, k)
    out = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, groups=b * c)
    return out.view(b, c, h, w)


def _pad_stack(images: list[Tensor]) -> Tensor:
    """Stack (1, C, h_i, w_i) images into a (B, C, H, W) canvas, edge-replicating to the largest size."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    return torch.cat([F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2]), mode="replicate")
                      if im.shape[-2:] != (h, w) else im for im in images])


def resize_each(x: Tensor, sizes: Sizes, new_sizes: Sizes, modes: list[str], antialias: bool) -> Tensor:
    """Resize image i of the canvas ``x`` from ``sizes[i]`` to ``new_sizes[i]`` with ``modes[i]``."""
    outs = [_interpolate(x[i:i + 1, :, :h, :w], new, mode, antialias)
            for i, ((h, w), new, mode) in enumerate(zip(sizes, new_sizes, modes, strict=True))]
    return _pad_stack(outs)


def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` for noise: ``generator`` itself on CPU, else one seeded from it."""
    if generator is None or device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def _gaussian_noise(x: Tensor, sigma: Tensor, gray: Tensor, gen: torch.Generator | None) -> Tensor:
    """Gaussian noise (sigma per image, on 0-1 scale); gray images share one noise map over channels."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    noise = torch.where(gray[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    return noise * sigma[:, None, None, None]


def _poisson_noise(x: Tensor, gen: torch.Generator | None) -> Tensor:
    """Unit-scale Poisson noise, photon count = distinct 8-bit levels rounded up to a power of 2 (BasicSR)."""
    img = quantise(x)
    levels = (img * 255).round().long().flatten(1)  # (b, C*H*W)
    present = torch.zeros(x.shape[0], 256, dtype=torch.bool, device=x.device).scatter_(1, levels, True)
    vals = 2.0 ** torch.ceil(torch.log2(present.sum(1).to(x.dtype)))
    vals = vals[:, None, None, None]
    return torch.poisson(img * vals, generator=gen) / vals - img


def _rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma, (b, 3, H, W) -> (b, 1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights[:, None, None]).sum(1, keepdim=True)


NOISE_KINDS = ("gaussian", "gaussian_gray", "poisson", "poisson_gray")


@dataclass
class NoiseDraw:
    """Per-image noise parameters: ``kind`` (B,) index into NOISE_KINDS (-1: none), ``level`` (B,) sigma or scale."""

    kind: Tensor
    level: Tensor

    def take(self, idx: Tensor) -> NoiseDraw:
        return NoiseDraw(kind=self.kind[idx], level=self.level[idx])


def draw_noise(cfg: NoiseConfig, active: Tensor, generator: torch.Generator | None) -> NoiseDraw:
    """Draw Gaussian (sigma on the 0-255 scale) or Poisson noise, colour or gray, for each ``active`` image."""
    b = len(active)
    poisson = torch.rand(b, generator=generator) >= cfg.gaussian_prob
    gray = torch.rand(b, generator=generator) < cfg.gray_prob
    sigma = uniform(b, *cfg.sigma, generator) / 255.0
    scale = uniform(b, *cfg.poisson_scale, generator)
    kind = 2 * poisson.long() + gray.long()
    kind = torch.where(active & cfg.enabled, kind, torch.full_like(kind, -1))
    return NoiseDraw(kind=kind, level=torch.where(poisson, scale, sigma))


def add_noise(x: Tensor, draw: NoiseDraw, gen: torch.Generator | None) -> Tensor:
    """Add each image's noise from ``draw`` (aligned with ``x`` (b, 3, H, W)) and clamp to [0, 1]."""
    out = x.clone()
    for k, kind in enumerate(NOISE_KINDS):
        idx = torch.nonzero(draw.kind == k).flatten()
        if len(idx) == 0:
            continue
        sub, level = x[idx.to(x.device)], draw.level[idx].to(x)[:, None, None, None]
        if kind.startswith("gaussian"):
            gray = torch.full((len(idx),), kind == "gaussian_gray", device=x.device)
            noise = _gaussian_noise(sub, level.flatten(), gray, gen)
        elif kind == "poisson_gray":
            noise = _poisson_noise(_rgb_to_gray(sub), gen).expand_as(sub) * level
        else:
            noise = _poisson_noise(sub, gen) * level
        out[idx.to(x.device)] = sub + noise
    return out.clamp_(0, 1)


def size_groups(sizes: Sizes, active: Tensor, ratio: float) -> list[tuple[Tensor, int, int]]:
    """Split the ``active`` images into groups of similar area: (indices, crop height, crop width) per group.

    A group holds images of at least ``ratio`` x the area of its largest (0: a single group).
    """
    area = [h * w for h, w in sizes]
    order = sorted((i for i in range(len(sizes)) if bool(active[i])), key=lambda i: -area[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and area[i] >= ratio * area[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [(torch.tensor(sorted(g)), max(sizes[i][0] for i in g), max(sizes[i][1] for i in g)) for g in groups]


def map_by_size(x: Tensor, sizes: Sizes, active: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Replace the ``active`` images of the canvas ``x`` by ``fn(sub, idx)``, run per group of similar size.

    ``sub`` is (b, C, h, w): the group's images cropped to the group's largest size; ``idx`` (b,)
    their CPU indices into the batch. Inactive images pass through unchanged.
    """
    out = x
    ratio = _CPU_GROUP_AREA_RATIO if x.device.type == "cpu" else 0.0
    for idx, h, w in size_groups(sizes, active, ratio):
        out = out.clone() if out is x else out
        dev_idx = idx.to(x.device)
        out[dev_idx, :, :h, :w] = fn(x[dev_idx, :, :h, :w], idx)
    return out


def apply_jpeg(x: Tensor, quality: Tensor, active: Tensor) -> Tensor:
    """Clamp to [0, 1] and JPEG-compress the ``active`` (B,) images at per-image ``quality`` (B,); the others
    pass unchanged (unclamped: the resize back to HR size sees them as they are, as in the reference)."""
    idx = torch.nonzero(active).flatten().to(x.device)
    if len(idx) == 0:
        return x
    out = x.clone()
    out[idx] = jpeg_compress(x[idx].clamp(0, 1), quality.to(x)[idx])
    return out


def draw_jpeg(cfg: JpegConfig, active: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Per-image JPEG qualities (B,) from ``cfg.quality`` and who gets compressed (``active`` and ``cfg.enabled``)."""
    quality = uniform(len(active), *cfg.quality, generator)
    return quality, active & cfg.enabled


def draw_resize(cfg: ResizeConfig, base: Sizes, sizes: Sizes, active: Tensor,
                generator: torch.Generator | None) -> tuple[Sizes, list[str]]:
    """Per-image target sizes (``base`` x a factor drawn up/down/keep) and modes; inactive images keep ``sizes``."""
    n = len(base)
    updown = choice(n, cfg.updown_probs, generator)
    up = uniform(n, 1.0, max(1.0, cfg.scale_range[1]), generator)
    down = uniform(n, min(1.0, cfg.scale_range[0]), 1.0, generator)
    factor = torch.where(updown == 0, up, torch.where(updown == 1, down, torch.ones_like(up)))
    modes = [RESIZE_MODES[m] for m in choice(n, cfg.mode_probs, generator).tolist()]
    on = active.tolist() if cfg.enabled else [False] * n
    new = [(max(1, int(h * f)), max(1, int(w * f))) if a else s
           for (h, w), s, f, a in zip(base, sizes, factor.tolist(), on, strict=True)]
    return new, modes


class RealESRGANDegradation:
    """Second-order Real-ESRGAN degradation with every random choice drawn per image.

    Call with an HR batch (B, 3, H, W) in [0, 1] on any device (H, W multiples of ``cfg.scale``).
    ``generator`` (a CPU ``torch.Generator``) makes the output reproducible; ``train`` picks the
    LR -> HR-size resize mode at random (``cfg.upsample_mode_probs``) instead of bicubic.
    A disabled stage leaves the images untouched; an image that skips the second pass
    (``1 - cfg.second_order_prob``) gets neither its blur, resize, noise nor JPEG, but is still
    resized to HR / scale with the final sinc filter.
    """

    cfg: DegradationConfig

    def __init__(self, cfg: DegradationConfig) -> None:
        self.cfg = cfg

    def _check(self, hr: Tensor, generator: torch.Generator | None) -> None:
        s = self.cfg.scale
        if hr.ndim != 4 or hr.shape[1] != 3 or not hr.is_floating_point():
            raise ValueError(f"degradation expects a float HR batch (B, 3, H, W), got {tuple(hr.shape)} {hr.dtype}")
        if hr.shape[-2] % s or hr.shape[-1] % s:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not a multiple of degradation.scale={s}; "
                             "change data.crop_size")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"degradation needs a CPU torch.Generator for its parameter draws, got {generator.device}")

    def _blur(self, x: Tensor, sizes: Sizes, cfg: BlurConfig, active: Tensor,
              generator: torch.Generator | None, record: dict[str, Tensor] | None = None,
              key: str = "blur1") -> Tensor:
        kernels = sample_blur_kernels(cfg, x.shape[0], generator)  # (B, K, K), pulses where not blurred
        blurred = active & ((kernels != 0).sum(dim=(-2, -1)) > 1)
        if record is not None:
            record[key] = blur_score(kernels, blurred & cfg.enabled, cfg)
        return map_by_size(x, sizes, blurred, lambda sub, idx: filter2d(sub, kernels[idx]))

    def _noise_jpeg(self, x: Tensor, sizes: Sizes, noise: NoiseDraw | None, jpeg: tuple[Tensor, Tensor] | None,
                    device_gen: torch.Generator | None) -> Tensor:
        """Noise (if drawn), then clamp and JPEG (if drawn), each batched over groups of similar size."""
        if noise is not None:
            x = map_by_size(x, sizes, noise.kind >= 0, lambda sub, idx: add_noise(sub, noise.take(idx), device_gen))
        if jpeg is None:
            return x
        quality, compressed = jpeg
        return map_by_size(x.clamp(0, 1), sizes, compressed,
                           lambda sub, idx: jpeg_compress(sub, quality[idx].to(sub)))

    def _first_pass(self, x: Tensor, generator: torch.Generator | None,
                    device_gen: torch.Generator | None,
                    record: dict[str, Tensor] | None = None) -> tuple[Tensor, Sizes]:
        """Blur -> random resize (relative to HR) -> noise -> JPEG, on every image."""
        cfg, b = self.cfg, x.shape[0]
        active = torch.ones(b, dtype=torch.bool)
        sizes: Sizes = [tuple(x.shape[-2:])] * b
        x = self._blur(x, sizes, cfg.blur1, active, generator, record, "blur1")
        new_sizes, modes = draw_resize(cfg.resize1, sizes, sizes, active, generator)
        if new_sizes != sizes:
            x = resize_each(x, sizes, new_sizes, modes, cfg.antialias)
        noise, jpeg = draw_noise(cfg.noise1, active, generator), draw_jpeg(cfg.jpeg1, active, generator)
        if record is not None:
            factor = torch.tensor([n[0] / s[0] for n, s in zip(new_sizes, sizes, strict=True)])
            record["resize1"] = resize_score(factor, cfg.resize1)
            record["noise1"] = noise_score(noise, cfg.noise1)
            record["jpeg1"] = jpeg_score(jpeg[0], jpeg[1], cfg.jpeg1)
        return self._noise_jpeg(x, new_sizes, noise, jpeg, device_gen), new_sizes

    def _second_pass(self, x: Tensor, sizes: Sizes, lr_size: tuple[int, int], active: Tensor,
                     generator: torch.Generator | None, device_gen: torch.Generator | None,
                     record: dict[str, Tensor] | None = None) -> tuple[Tensor, Sizes]:
        """Blur -> random resize (relative to HR / scale, as Real-ESRGAN) -> noise, on the ``active`` images."""
        cfg = self.cfg
        x = self._blur(x, sizes, cfg.blur2, active, generator, record, "blur2")
        new_sizes, modes = draw_resize(cfg.resize2, [lr_size] * x.shape[0], sizes, active, generator)
        if new_sizes != sizes:
            x = resize_each(x, sizes, new_sizes, modes, cfg.antialias)
        noise = draw_noise(cfg.noise2, active, generator)
        if record is not None:
            on = active.tolist() if cfg.resize2.enabled else [False] * len(new_sizes)
            factor = torch.tensor([n[0] / lr_size[0] if a else 1.0 for n, a in zip(new_sizes, on, strict=True)])
            record["resize2"] = resize_score(factor, cfg.resize2)
            record["noise2"] = noise_score(noise, cfg.noise2)
        return self._noise_jpeg(x, new_sizes, noise, None, device_gen), new_sizes

    def _final(self, x: Tensor, sizes: Sizes, lr_size: tuple[int, int], active: Tensor,
               generator: torch.Generator | None, record: dict[str, Tensor] | None = None) -> Tensor:
        """In random order per image: {resize to ``lr_size`` + final sinc} and {JPEG (``active`` only)}.

        Returns the float LR, not yet quantised: the reference resizes it back to the HR size
        before clamping and rounding to 8 bits.
        """
        cfg, b = self.cfg, x.shape[0]
        # Real-ESRGAN picks either order with probability 1/2 (realesrgan_model.py, feed_data).
        jpeg_first = torch.rand(b, generator=generator) < 0.5
        quality, compressed = draw_jpeg(cfg.jpeg2, active, generator)
        if record is not None:
            record["jpeg2"] = jpeg_score(quality, compressed, cfg.jpeg2)
        x = self._noise_jpeg(x, sizes, None, (quality, compressed & jpeg_first), None)
        modes = [RESIZE_MODES[m] for m in choice(b, cfg.final_resize_mode_probs, generator).tolist()]
        sinc = sample_final_sinc_kernels(b, cfg.final_sinc_kernel_sizes, cfg.final_sinc_cutoff,
                                         cfg.final_sinc_prob, generator)
        x = filter2d(resize_each(x, sizes, [lr_size] * b, modes, cfg.antialias), sinc)
        return apply_jpeg(x, quality, compressed & ~jpeg_first)

    def _upsample(self, lr: Tensor, size: tuple[int, int], train: bool, generator: torch.Generator | None) -> Tensor:
        """Resize LR back to ``size``: a random mode per image in training, bicubic otherwise."""
        if not train:
            return upsample_lr(lr, size, "bicubic")
        modes = choice(lr.shape[0], self.cfg.upsample_mode_probs, generator)
        out = torch.empty(*lr.shape[:2], *size, dtype=lr.dtype, device=lr.device)
        for m, mode in enumerate(RESIZE_MODES):
            idx = torch.nonzero(modes == m).flatten().to(lr.device)
            if len(idx):
                out[idx] = upsample_lr(lr[idx], size, mode)
        return out

    @torch.no_grad()
    def __call__(self, hr: Tensor, generator: torch.Generator | None = None, *, train: bool = True) -> DegradedPair:
        """Degrade ``hr`` (B, 3, H, W) in [0, 1] -> LR (B, 3, H/s, W/s) and LR resized to (H, W), 8-bit levels."""
        self._check(hr, generator)
        b, _, h, w = hr.shape
        lr_size = (h // self.cfg.scale, w // self.cfg.scale)
        device_gen = _device_generator(generator, hr.device)
        record: dict[str, Tensor] = {}
        x, sizes = self._first_pass(hr.float(), generator, device_gen, record)
        second = torch.rand(b, generator=generator) < self.cfg.second_order_prob
        x, sizes = self._second_pass(x, sizes, lr_size, second, generator, device_gen, record)
        lr = self._final(x, sizes, lr_size, second, generator, record)  # float, unquantised
        scores = torch.stack([record[k].float() for k in SCORE_NAMES], dim=1).to(hr.device)  # (B, K)
        if self.cfg.bicubic_prob > 0:
            plain = torch.nonzero(torch.rand(b, generator=generator) < self.cfg.bicubic_prob).flatten()
            if len(plain):
                plain = plain.to(hr.device)
                lr[plain] = downsample_bicubic(hr[plain].float(), self.cfg.scale).to(lr.dtype)
                scores[plain] = 0.0  # no blur, noise or JPEG: every degradation absent
        return DegradedPair(lr=quantise(lr), lr_up=self._upsample(lr, (h, w), train, generator), scores=scores)
