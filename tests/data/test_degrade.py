"""Batched second-order Real-ESRGAN degradation (vosr/data/degrade.py), measured on real photos."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import real_photos
from vosr.config import core
from vosr.config.degradation import DegradationConfig
from vosr.data import degrade as D
from vosr.data.kernels import sample_blur_kernels

REALESRGAN = "configs/degradation/realesrgan.yaml"
BICUBIC = "configs/degradation/bicubic.yaml"
STAGES = ["blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2", "jpeg2", "final_sinc"]


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """(5, 3, 96, 128) crops of five real photos."""
    return torch.stack([_to_tensor(p[100:196, 100:228]) for p in real_photos()])


def _cfg(path: str = REALESRGAN, overrides: list[str] | None = None) -> DegradationConfig:
    return core.load(DegradationConfig, path, overrides)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1.0 / ((a - b) ** 2).mean(dim=(1, 2, 3)))


def _is_8bit(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x * 255, (x * 255).round(), atol=1e-3)) and x.min() >= 0 and x.max() <= 1


def test_shapes_ranges_and_8bit_levels(hr: torch.Tensor) -> None:
    out = D.RealESRGANDegradation(_cfg())(hr, torch.Generator().manual_seed(0))
    assert out.lr.shape == (5, 3, 24, 32) and out.lr_up.shape == hr.shape
    assert out.lr.dtype == out.lr_up.dtype == torch.float32
    assert _is_8bit(out.lr) and _is_8bit(out.lr_up)
    assert (_psnr(out.lr_up, hr) < 40).all(), "the degradation must change the images"


def test_same_seed_same_output_and_other_seed_differs(hr: torch.Tensor) -> None:
    deg = D.RealESRGANDegradation(_cfg())
    a, b = (deg(hr, torch.Generator().manual_seed(7)) for _ in range(2))
    c = deg(hr, torch.Generator().manual_seed(8))
    assert torch.equal(a.lr, b.lr) and torch.equal(a.lr_up, b.lr_up)
    assert not torch.equal(a.lr, c.lr)


def test_images_in_a_batch_get_different_degradations(hr: torch.Tensor) -> None:
    same = hr[:1].expand(6, -1, -1, -1).contiguous()
    lr = D.RealESRGANDegradation(_cfg())(same, torch.Generator().manual_seed(1)).lr
    for i in range(6):
        for j in range(i + 1, 6):
            assert (lr[i] - lr[j]).abs().mean() > 1 / 255, f"images {i} and {j} got the same degradation"


def test_all_stages_off_is_plain_resizing(hr: torch.Tensor) -> None:
    out = D.RealESRGANDegradation(_cfg(BICUBIC))(hr, torch.Generator().manual_seed(0), train=True)
    assert torch.equal(out.lr, D.downsample_bicubic(hr, 4))
    # The resize back starts from the float LR, quantised only after it (as the reference).
    lr_float = F.interpolate(hr, size=(24, 32), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(out.lr_up, D.upsample_lr(lr_float, (96, 128), "bicubic"))
    assert not torch.equal(out.lr_up, D.upsample_lr(out.lr, (96, 128), "bicubic"))
    # The published config with every stage switched off is Real-ESRGAN's plain (aliased) resize.
    off = [f"{s}.enabled=false" for s in STAGES[:-1]] + [
        "second_order_prob=0.0", "final_sinc_prob=0.0", "final_resize_mode_probs=[0,0,1]"]
    lr = D.RealESRGANDegradation(_cfg(REALESRGAN, off))(hr, torch.Generator().manual_seed(0)).lr
    assert torch.equal(lr, D.quantise(F.interpolate(hr, size=(24, 32), mode="bicubic", align_corners=False)))


def _only(stage: str) -> DegradationConfig:
    """The bicubic config with one stage of the published config switched on."""
    cfg, full = _cfg(BICUBIC), _cfg()
    if stage == "final_sinc":
        cfg.final_sinc_prob, cfg.final_sinc_kernel_sizes = 1.0, full.final_sinc_kernel_sizes
    else:
        setattr(cfg, stage, getattr(full, stage))
    if stage.endswith("2"):
        cfg.second_order_prob = 1.0
    if stage.startswith("blur"):
        getattr(cfg, stage).prob = 1.0
    return cfg


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_switches_on_and_off(hr: torch.Tensor, stage: str) -> None:
    base = D.downsample_bicubic(hr, 4)
    lr = D.RealESRGANDegradation(_only(stage))(hr, torch.Generator().manual_seed(0)).lr
    changed = (lr - base).abs().mean(dim=(1, 2, 3))
    assert (changed > 0.5 / 255).sum() >= 3, f"{stage} on: {changed.tolist()}"
    if stage.startswith("noise"):  # noise adds high-frequency energy
        lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        energy = [F.conv2d(x, lap, groups=3).abs().mean().item() for x in (lr, base)]
        assert energy[0] > energy[1]


def test_blur_lowers_detail_on_a_real_photo(hr: torch.Tensor) -> None:
    cfg = _only("blur1")
    cfg.blur1.sigma, cfg.blur1.sinc_prob = (2.5, 3.0), 0.0
    lr = D.RealESRGANDegradation(cfg)(hr, torch.Generator().manual_seed(0)).lr
    base = D.downsample_bicubic(hr, 4)
    grad = [(x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)) for x in (lr, base)]
    ratio = grad[0] / grad[1]  # < 1 for every image, well below on average (kernel sizes from 7 truncate)
    assert (ratio < 0.95).all() and ratio.mean() < 0.85, ratio.tolist()


def test_filter2d_is_a_per_image_convolution(hr: torch.Tensor) -> None:
    kernels = sample_blur_kernels(_cfg().blur1, hr.shape[0], torch.Generator().manual_seed(2))
    out = D.filter2d(hr, kernels)
    for i in range(hr.shape[0]):
        padded = F.pad(hr[i:i + 1], (10,) * 4, mode="reflect")
        ref = F.conv2d(padded, kernels[i].expand(3, 1, 21, 21), groups=3)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=0)


def test_resize_each_gives_each_image_its_own_size(hr: torch.Tensor) -> None:
    sizes = [(96, 128)] * 5
    new = [(30, 40), (96, 128), (144, 192), (11, 13), (60, 80)]
    modes = ["area", "bilinear", "bicubic", "bicubic", "bilinear"]
    canvas = D.resize_each(hr, sizes, new, modes, antialias=False)
    assert canvas.shape == (5, 3, 144, 192)
    for i, ((h, w), mode) in enumerate(zip(new, modes, strict=True)):
        ref = D._interpolate(hr[i:i + 1], (h, w), mode)
        assert torch.equal(canvas[i:i + 1, :, :h, :w], ref)
    cfg = _cfg()
    everyone = torch.ones(5, dtype=torch.bool)
    drawn, _ = D.draw_resize(cfg.resize1, sizes, sizes, everyone, torch.Generator().manual_seed(0))
    assert len(set(drawn)) > 1, "resize factors must be drawn per image"


def _blockiness(x: torch.Tensor) -> float:
    """Mean abs luma step across 8x8 block borders over the mean step inside blocks (1 for a natural image)."""
    y = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1)
    dx, dy = (y[..., 1:] - y[..., :-1]).abs(), (y[..., 1:, :] - y[..., :-1, :]).abs()
    border_x = torch.arange(dx.shape[-1]) % 8 == 7
    border_y = torch.arange(dy.shape[-2]) % 8 == 7
    across = dx[..., border_x].mean() + dy[..., border_y, :].mean()
    inside = dx[..., ~border_x].mean() + dy[..., ~border_y, :].mean()
    return (across / inside).item()


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Reference libjpeg round trip through PIL (tests only)."""
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            buf, format="JPEG", quality=quality)
        out.append(_to_tensor(np.array(Image.open(buf))))
    return torch.stack(out)


def test_jpeg_quality_100_is_near_lossless_and_10_is_blocky() -> None:
    photos = torch.stack([_to_tensor(p[:256, :256]) for p in real_photos()[:3]])
    everyone = torch.ones(3, dtype=torch.bool)
    q100 = D.apply_jpeg(photos, torch.full((3,), 100.0), everyone)
    q10 = D.apply_jpeg(photos, torch.full((3,), 10.0), everyone)
    assert _psnr(q100, photos).mean() > 40
    assert (_psnr(q10, photos) < _psnr(q100, photos) - 10).all()
    assert _blockiness(photos) < 1.1 and _blockiness(q100) < 1.1
    assert _blockiness(q10) > 2.0
    # The tensor codec tracks libjpeg at the same quality.
    for quality, ours in ((100, q100), (10, q10)):
        ref = _pil_jpeg(photos, quality)
        assert (_psnr(ours, photos) - _psnr(ref, photos)).abs().max() < 1.5
        assert abs(_blockiness(ours) - _blockiness(ref)) < 0.3
    # Per-image quality: only the selected image changes, each at its own quality.
    mixed = D.apply_jpeg(photos, torch.tensor([10.0, 100.0, 50.0]), torch.tensor([True, True, False]))
    assert torch.equal(mixed[2], photos[2]) and torch.equal(mixed[:2], torch.stack([q10[0], q100[1]]))


def test_train_flag_picks_the_upsampling(hr: torch.Tensor) -> None:
    deg = D.RealESRGANDegradation(_cfg(REALESRGAN, ["upsample_mode_probs=[1,0,0]"]))
    val = deg(hr, torch.Generator().manual_seed(3), train=False)
    def near(a: torch.Tensor, b: torch.Tensor) -> bool:  # the resize back starts from the unquantised LR
        return bool(((a - b).abs() <= 1 / 255 + 1e-6).float().mean() > 0.99)

    assert near(val.lr_up, D.upsample_lr(val.lr, (96, 128), "bicubic"))
    train = deg(hr, torch.Generator().manual_seed(3), train=True)
    assert torch.equal(train.lr, val.lr)
    assert near(train.lr_up, D.upsample_lr(train.lr, (96, 128), "area"))
    assert (train.lr_up - val.lr_up).abs().max() > 4 / 255


def test_bad_input_names_the_key(hr: torch.Tensor) -> None:
    deg = D.RealESRGANDegradation(_cfg())
    with pytest.raises(ValueError, match="degradation.scale"):
        deg(hr[..., :94, :])
    with pytest.raises(ValueError, match="float HR batch"):
        deg((hr * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="change data.crop_size"):
        D.downsample_bicubic(hr[..., :, :126], 4)


def test_full_real_photo_and_light_config() -> None:
    photo = _to_tensor(real_photos()[0][:512, :512])[None]  # astronaut, 512 x 512
    for path in (REALESRGAN, "configs/degradation/light.yaml"):
        out = D.RealESRGANDegradation(_cfg(path))(photo, torch.Generator().manual_seed(0))
        assert out.lr.shape == (1, 3, 128, 128) and _is_8bit(out.lr_up)
        psnr = _psnr(out.lr_up, photo).item()
        assert 15 < psnr < 35, f"{path}: PSNR {psnr:.1f} dB is not that of a degraded photo"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device(hr: torch.Tensor) -> None:
    deg = D.RealESRGANDegradation(_cfg())
    a, b = (deg(hr.cuda(), torch.Generator().manual_seed(5)) for _ in range(2))
    assert a.lr.device.type == "cuda" and a.lr_up.device.type == "cuda"
    assert torch.equal(a.lr, b.lr) and _is_8bit(a.lr.cpu())


def test_bicubic_prob_mixes_plain_bicubic_images() -> None:
    """bicubic_prob=1: every LR is the bicubic protocol's downscale; 0.5: some are, the others keep their
    Real-ESRGAN LR exactly (the plain draw comes after every other draw)."""
    hr = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = D.downsample_bicubic(hr, 4)
    every = D.RealESRGANDegradation(_cfg(REALESRGAN, ["bicubic_prob=1.0"]))(hr, torch.Generator().manual_seed(3))
    torch.testing.assert_close(every.lr, plain, atol=0, rtol=0)
    base = D.RealESRGANDegradation(_cfg())(hr, torch.Generator().manual_seed(3)).lr
    half = D.RealESRGANDegradation(_cfg(REALESRGAN, ["bicubic_prob=0.5"]))(hr, torch.Generator().manual_seed(3)).lr
    is_plain = [bool(torch.equal(half[i], plain[i])) for i in range(8)]
    assert 0 < sum(is_plain) < 8
    for i in range(8):
        assert torch.equal(half[i], plain[i] if is_plain[i] else base[i])
    with pytest.raises(ValueError, match="bicubic_prob"):
        _cfg(REALESRGAN, ["bicubic_prob=1.5"])
