"""Autoencoders: pixel space round trip, diffusers VAEs from local files, clear path errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vosr.config import AutoencoderConfig
from vosr.models.autoencoder import DiffusersVAE, PixelSpace, build_autoencoder, light_decoder_config


def _photos(size: int = 64) -> torch.Tensor:
    from skimage import data  # real photographs (the same source as conftest.real_photos)

    crops = [np.ascontiguousarray(p[:size, :size, :3]) for p in (data.astronaut(), data.coffee())]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255  # (2, 3, size, size)


def _tiny_kl(**kw: object) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                         norm_num_groups=32, scaling_factor=0.5, **kw)


@pytest.mark.parametrize("unshuffle", [1, 4])
def test_pixel_space_round_trip(unshuffle: int) -> None:
    img = _photos()
    ae = build_autoencoder(AutoencoderConfig(kind="pixel", pixel_unshuffle=unshuffle))
    latent = ae.encode(img)
    assert isinstance(ae, PixelSpace) and ae.latent_channels == 3 * unshuffle ** 2
    assert latent.shape == (2, 3 * unshuffle ** 2, 64 // unshuffle, 64 // unshuffle)
    assert latent.min() >= -1 and latent.max() <= 1
    out = ae.decode(latent)  # exact up to float rounding of 2x - 1 and back: identical 8-bit images
    torch.testing.assert_close(out, img, atol=1e-7, rtol=0)
    assert torch.equal((out * 255).round(), (img * 255).round())
    with pytest.raises(ValueError, match="pixel_unshuffle"):
        PixelSpace(3).encode(img)


def test_diffusers_folder_loads(tmp_path: Path) -> None:
    vae = _tiny_kl()
    vae.save_pretrained(tmp_path / "vae")
    ae = build_autoencoder(AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "vae")))
    assert isinstance(ae, DiffusersVAE) and (ae.latent_channels, ae.downsample) == (4, 2)
    assert not any(p.requires_grad for p in ae.parameters()) and not ae.train().training
    img = _photos()
    latent = ae.encode(img)
    assert latent.shape == (2, 4, 32, 32)
    with torch.no_grad():  # deterministic: the posterior mean times the config's scaling factor
        expected = vae.encode(img * 2 - 1).latent_dist.mean * 0.5
    torch.testing.assert_close(latent, expected)
    torch.testing.assert_close(ae.encode(img), latent)
    out = ae.decode(latent)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    # an explicit scaling_factor overrides the model's own; a pipeline folder's vae/ is found
    ae2 = build_autoencoder(AutoencoderConfig(kind="sd_vae", path=str(tmp_path), scaling_factor=0.25))
    torch.testing.assert_close(ae2.encode(img), latent / 2)
    # training draws from the posterior (as the reference), reproducibly from the given generator
    draw = ae.encode(img, torch.Generator().manual_seed(3))
    torch.testing.assert_close(draw, ae.encode(img, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        std = vae.encode(img * 2 - 1).latent_dist.std * 0.5
    z = (draw - latent) / std  # a standard normal draw around the mean
    assert abs(z.mean().item()) < 0.05 and z.std().item() == pytest.approx(1.0, abs=0.05)


def test_single_safetensors_and_light_decoder(tmp_path: Path) -> None:
    from diffusers.models.autoencoders.vae import Decoder

    vae = _tiny_kl()
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    vae.save_config(tmp_path)  # config.json beside the file
    torch.manual_seed(1)
    decoder = Decoder(**light_decoder_config(4))
    save_file({f"decoder.{k}": v for k, v in decoder.state_dict().items()}, str(tmp_path / "light.safetensors"))
    ae = build_autoencoder(AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "vae.safetensors"),
                                             decoder_path=str(tmp_path / "light.safetensors")))
    latent = ae.encode(_photos(16))
    out = ae.decode(latent)
    assert out.shape == (2, 3, 16 * 4, 16 * 4)  # the light decoder upsamples x8 (4 up blocks)
    with torch.no_grad():
        torch.testing.assert_close(out, ((decoder(latent / 0.5) + 1) / 2).clamp(0, 1))


def test_qwen_image_vae(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "AutoencoderKLQwenImage"):
        pytest.skip("installed diffusers has no AutoencoderKLQwenImage")
    torch.manual_seed(0)
    mean, std = [0.1, -0.2, 0.3, 0.0], [2.0, 1.0, 0.5, 1.5]
    vae = diffusers.AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                           temperal_downsample=[False], latents_mean=mean, latents_std=std)
    vae.save_pretrained(tmp_path / "qwen")
    ae = build_autoencoder(AutoencoderConfig(kind="qwen_image", path=str(tmp_path / "qwen")))
    img = _photos(32)
    latent = ae.encode(img)
    assert (ae.latent_channels, ae.downsample) == (4, 2) and latent.shape == (2, 4, 16, 16)
    with torch.no_grad():
        raw = vae.encode((img * 2 - 1)[:, :, None]).latent_dist.mean[:, :, 0]
    torch.testing.assert_close(latent, (raw - torch.tensor(mean).view(1, -1, 1, 1))
                               / torch.tensor(std).view(1, -1, 1, 1))
    assert ae.decode(latent).shape == img.shape


def test_missing_paths_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="autoencoder.path"):
        build_autoencoder(AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "nope")))
    _tiny_kl().save_pretrained(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match="autoencoder.decoder_path"):
        build_autoencoder(AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "vae"),
                                            decoder_path=str(tmp_path / "nope.safetensors")))
