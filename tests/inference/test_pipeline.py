"""The pipeline's input side matches the reference: PIL bicubic LR upsampling in 8 bits, AdaIN by default."""
from __future__ import annotations

import inspect

import numpy as np
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.data.degrade import upsample_lr
from vosr.images import to_tensor
from vosr.inference.pipeline import SRPipeline, load_pipeline


def test_prepare_is_pil_bicubic(tmp_path) -> None:
    pipe = load_pipeline(make_export(tmp_path / "m.safetensors"))
    lr = photo(0, 40, 56, 100, 180)  # a real photo crop with edges
    up = pipe.prepare(to_tensor(lr))
    expected = np.asarray(Image.fromarray(lr).resize((56 * 4, 40 * 4), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal((up[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    # why it matters: torch's bicubic (a = -0.75) is not the reference's PIL kernel (a = -0.5)
    torch_up = upsample_lr(to_tensor(lr), (160, 224), "bicubic")
    assert (torch_up - up).abs().max() * 255 > 1.5


def test_colour_fix_defaults_to_adain() -> None:
    """One default everywhere: the pipeline and the CLI."""
    from vosr.infer import build_parser

    assert inspect.signature(SRPipeline.upscale).parameters["color_fix"].default == "adain"
    assert build_parser().parse_args(["-c", "m", "-i", "x", "-o", "y"]).color_fix == "adain"
