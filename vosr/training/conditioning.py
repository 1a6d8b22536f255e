"""The optional conditioning inputs of a training step (issue 9): LR pixels, degradation scores, the
region-adaptive keep map, and the degradation estimator's loss.

``Extras`` is what the data side hands over with each batch; ``bind`` wraps a model so the pure
objective functions (``vosr.method.flow`` / ``distill``) call it as before, ``model(x, t, sem, r)``,
while the wrapper adds the keyword inputs, repeated to the call's batch (the objectives stack 2B
inputs as ``cat([a, b])``, so repeating the B extras matches them row for row).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vosr.config import RunConfig
from vosr.method.flow import condition_keep_map, rand

MODULE_PREFIXES = ("lr_branch.", "degradation_embed.", "degradation_head.")
"""State-dict prefixes of the optional modules: a checkpoint without them loads (they start neutral)."""


@dataclass
class Extras:
    """Per-batch inputs of the conditioning modules (None when absent)."""

    lr_up: Tensor | None = None
    """(B, 3, H, W) the upsampled LR in [0, 1], on the HR grid."""
    scores: Tensor | None = None
    """(B, K) degradation scores in [0, 1] (``vosr.data.degrade.SCORE_NAMES``)."""


def _repeat_to(value: Tensor, batch: int) -> Tensor:
    """``value`` (B, ...) repeated as ``cat([value] * k)`` to ``batch`` = k B rows."""
    if value.shape[0] == batch:
        return value
    if batch % value.shape[0]:
        raise ValueError(f"conditioning input of batch {value.shape[0]} cannot follow a call of batch {batch}")
    return value.repeat(batch // value.shape[0], *([1] * (value.dim() - 1)))


@dataclass
class Bound:
    """A model called like ``model(x, t, sem, r)`` that adds ``degradation=`` / ``lr_pixels=``.

    With ``estimate`` the first call also asks for the degradation estimator's output and records it
    (with which rows had real semantic tokens) in ``estimates``.
    """

    model: object
    degradation: Tensor | None = None
    lr_pixels: Tensor | None = None
    estimate: bool = False
    estimates: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def __call__(self, x: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        kwargs = {}
        if self.degradation is not None:
            kwargs["degradation"] = _repeat_to(self.degradation, x.shape[0])
        if self.lr_pixels is not None:
            kwargs["lr_pixels"] = _repeat_to(self.lr_pixels, x.shape[0])
        if self.estimate and not self.estimates and sem is not None:
            out, est = self.model(x, t, sem, r, return_degradation=True, **kwargs)
            if est is not None:
                self.estimates.append((est, sem.flatten(1).abs().amax(1) > 0))  # weak rows have zero tokens
            return out
        return self.model(x, t, sem, r, **kwargs) if kwargs else self.model(x, t, sem, r)


def any_module(cfg: RunConfig) -> bool:
    """Whether any conditioning module or the keep map is switched on."""
    m = cfg.model
    return bool(m.lr_pixel_branch or m.degradation_condition or cfg.flow.cond_noise_map != "none")


def drop_scores(scores: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Rows of ``scores`` (B, K) replaced by NaN (= no scores) with probability ``p`` each."""
    if p <= 0:
        return scores
    drop = rand((scores.shape[0],), generator, scores.device) < p
    return torch.where(drop[:, None], torch.full_like(scores, float("nan")), scores)


def bind(cfg: RunConfig, model, extras: Extras | None, generator: torch.Generator | None = None, *,
         train: bool = True, estimate: bool = False) -> Bound | object:
    """``model`` with the batch's extras that ``cfg`` switches on (the model itself when none is)."""
    m = cfg.model
    if extras is None or not (m.lr_pixel_branch or m.degradation_condition):
        return model
    scores = extras.scores if m.degradation_condition else None
    if scores is not None and train:
        scores = drop_scores(scores, m.degradation_drop, generator)
    return Bound(model, degradation=scores, lr_pixels=extras.lr_up if m.lr_pixel_branch else None,
                 estimate=estimate and m.degradation_estimator)


def keep_map(cfg: RunConfig, extras: Extras | None, z_lq: Tensor) -> Tensor | None:
    """The spatial keep ratio of ``flow.cond_noise_map`` on ``z_lq``'s grid (None for ``none``)."""
    if cfg.flow.cond_noise_map == "none":
        return None
    return condition_keep_map(None if extras is None else extras.lr_up, tuple(z_lq.shape[-2:]), cfg.flow)


def estimator_loss(cfg: RunConfig, bound, extras: Extras | None, loss: Tensor,
                   stats: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
    """Add ``model.degradation_estimator_weight`` x MSE of the estimated scores (rows with semantic tokens)."""
    if not isinstance(bound, Bound) or not bound.estimates or extras is None or extras.scores is None:
        return loss, stats
    est, valid = bound.estimates[0]
    target = _repeat_to(extras.scores.to(est.device), est.shape[0])
    err = (est.float() - target.float()).pow(2).mean(1)  # (B,)
    mse = (err * valid).sum() / valid.sum().clamp_min(1)
    total = loss + cfg.model.degradation_estimator_weight * mse
    return total, {**stats, "loss/degradation_estimator": float(mse.detach())}
