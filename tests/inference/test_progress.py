"""One progress bar per image that counts every tile pass of every stage and sampler step."""
from __future__ import annotations

import pytest
import torch
import tqdm.auto

from tests.export_helpers import make_export, photo
from vosr.images import to_tensor
from vosr.inference.pipeline import TileOptions, load_pipeline


class Bar:
    """Records what the pipeline tells its tqdm bar (the display itself is tqdm's business)."""

    made: list[Bar] = []

    def __init__(self, total: int, desc: str, disable: bool, **_) -> None:
        self.total, self.desc, self.disable, self.done, self.closed = total, desc, disable, 0, False
        Bar.made.append(self)

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("overrides, steps", [((), 3), (("model.with_r=true",), None)])
def test_bar_counts_every_tile_of_every_stage(tmp_path, monkeypatch, overrides, steps):
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    Bar.made.clear()
    pipe = load_pipeline(make_export(tmp_path / "m.safetensors", *overrides))
    lr = to_tensor(photo(0, 40, 56))  # (1, 3, 40, 56) -> 160 x 224 output
    tiles = TileOptions(tile=64, overlap=16, ae_tile=96, ae_overlap=16, batch=3)
    out = pipe.upscale(lr, steps=steps, tiles=tiles, progress="astronaut.png")
    assert out.shape[-2:] == (160, 224)
    (bar,) = Bar.made
    latent_tiles = len(pipe.latent_grid((160 // pipe.autoencoder.downsample, 224 // pipe.autoencoder.downsample),
                                        tiles))
    assert latent_tiles > 4 and bar.desc == "astronaut.png" and not bar.disable and bar.closed
    assert bar.done == bar.total > (steps or 1) * latent_tiles, (bar.done, bar.total)


def test_no_bar_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    Bar.made.clear()
    pipe = load_pipeline(make_export(tmp_path / "m.safetensors"))
    pipe.upscale(torch.rand(1, 3, 16, 16), steps=1)
    assert [b.disable for b in Bar.made] == [True]
