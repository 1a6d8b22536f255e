"""Degradation scores (model.degradation_condition, S3Diff): what the pipeline returns, and the modules."""
from __future__ import annotations

import pytest
import torch

from tests.data.test_degrade import BICUBIC, _cfg, _only, hr  # noqa: F401 (fixture)
from vosr.data import degrade as D
from vosr.models.conditioning import DegradationEmbed, DegradationHead


def test_scores_shape_range_and_same_images(hr: torch.Tensor) -> None:  # noqa: F811
    deg = D.RealESRGANDegradation(_cfg())
    pair = deg(hr, torch.Generator().manual_seed(0))
    assert pair.scores.shape == (hr.shape[0], len(D.SCORE_NAMES))
    assert pair.scores.min() >= 0 and pair.scores.max() <= 1 and torch.isfinite(pair.scores).all()
    assert pair.scores.std(0).sum() > 0  # images draw different parameters
    # Recording the draws changes nothing: the images are those of a second identical call.
    again = deg(hr, torch.Generator().manual_seed(0))
    assert torch.equal(pair.lr, again.lr) and torch.equal(pair.scores, again.scores)


def test_all_off_scores(hr: torch.Tensor) -> None:  # noqa: F811
    scores = D.RealESRGANDegradation(_cfg(BICUBIC))(hr, torch.Generator().manual_seed(0)).scores
    k = {n: i for i, n in enumerate(D.SCORE_NAMES)}
    for name in ("blur1", "noise1", "jpeg1", "blur2", "noise2", "jpeg2"):
        assert torch.all(scores[:, k[name]] == 0), name


@pytest.mark.parametrize("stage", ["blur1", "noise1", "jpeg1", "noise2", "jpeg2"])
def test_each_stage_scores_only_itself(hr: torch.Tensor, stage: str) -> None:  # noqa: F811
    scores = D.RealESRGANDegradation(_only(stage))(hr, torch.Generator().manual_seed(0)).scores
    col = D.SCORE_NAMES.index(stage)
    assert torch.all(scores[:, col] > 0), stage
    others = [i for i, n in enumerate(D.SCORE_NAMES) if n != stage and not n.startswith("resize")]
    assert torch.all(scores[:, others] == 0)


def test_kernel_width_of_a_gaussian() -> None:
    pos = torch.arange(21.0) - 10
    g = torch.exp(-(pos[:, None] ** 2 + pos[None] ** 2) / (2 * 2.0 ** 2))
    assert torch.isclose(D.kernel_width((g / g.sum())[None]), torch.tensor([2.0]), atol=1e-3)
    pulse = torch.zeros(1, 21, 21)
    pulse[0, 10, 10] = 1
    assert D.kernel_width(pulse) == 0


def test_parse_scores() -> None:
    s = D.parse_scores("noise=0.3,blur=0.5,jpeg=0.2")
    named = dict(zip(D.SCORE_NAMES, s.tolist(), strict=True))
    assert named["noise1"] == named["noise2"] == pytest.approx(0.3)
    assert named["blur1"] == named["blur2"] == 0.5 and named["resize1"] == 0
    assert D.parse_scores("jpeg2=1")[D.SCORE_NAMES.index("jpeg2")] == 1
    for bad in ("noise", "fog=0.1", "noise=2", "noise=abc"):
        with pytest.raises(ValueError, match="--degradation"):
            D.parse_scores(bad)


def test_embed_is_zero_at_init_and_nan_rows_add_nothing() -> None:
    emb = DegradationEmbed(8, 16)
    emb.reset_parameters()
    assert torch.all(emb(torch.rand(3, 8)) == 0)
    torch.nn.init.normal_(emb.mlp[2].weight)
    scores = torch.rand(3, 8)
    scores[1] = float("nan")
    out = emb(scores)
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0 and torch.isfinite(out).all()


def test_head_range() -> None:
    est = DegradationHead(12, 8)(torch.randn(2, 5, 12))
    assert est.shape == (2, 8) and est.min() > 0 and est.max() < 1
