"""Loading released VOSR checkpoints (and our own exports) into ``VOSRDiT``.

Released files use the model's own parameter names, so loading is a key/shape check plus
``load_state_dict``. The RoPE tables (``feat_rope.*``) are derived buffers: they are
dropped from the source and rebuilt by the model, so a checkpoint trained at another
resolution still loads.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vosr.models.layers import RoPE2D

logger = logging.getLogger(__name__)

DERIVED_PREFIXES = ("feat_rope.",)
NESTED_KEYS = ("ema", "model", "state_dict", "module")


@dataclass
class WeightsReport:
    """Outcome of matching a source state dict against a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    """``key: source shape vs model shape`` lines."""
    loaded: int = 0

    @property
    def ok(self) -> bool:
        """True when every model key was found with the right shape and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        """Human-readable summary listing up to ``limit`` keys per category."""
        parts = [f"{self.loaded} tensors matched"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts)


def read_state_dict(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """Read a flat state dict from a ``.safetensors``/``.pt``/``.pth``/``.bin`` file or a dict.

    Nested checkpoints are unwrapped through the first of ``ema``, ``model``, ``state_dict``,
    ``module`` that holds a mapping (EMA first: it is the weights meant for inference).
    """
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; check model.init_from "
                                    "(or the weights path you passed)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    while not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in NESTED_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no tensors found in weights source (top-level keys: {sorted(state)[:10]}); "
                             f"expected a state dict, possibly nested under one of {NESTED_KEYS}")
        state = inner
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                     allow_missing: tuple[str, ...] = ()) -> WeightsReport:
    """Compare ``state`` with ``model``'s state dict, ignoring derived ``feat_rope.*`` buffers.

    Keys starting with a prefix in ``allow_missing`` may be absent (e.g. ``r_embedder.``
    when a one-step student starts from a teacher).
    """
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(DERIVED_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(DERIVED_PREFIXES)}
    report = WeightsReport()
    report.missing = [k for k in expected if k not in given and not k.startswith(allow_missing)]
    report.unexpected = [k for k in given if k not in expected]
    for key, tensor in given.items():
        if key in expected:
            if tensor.shape != expected[key]:
                report.mismatched.append(f"{key}: {tuple(tensor.shape)} vs {tuple(expected[key])}")
            else:
                report.loaded += 1
    return report


def load_vosr_weights(model: nn.Module, source: str | Path | dict, strict: bool = True,
                      allow_missing: tuple[str, ...] = ()) -> WeightsReport:
    """Load released VOSR weights (or our export) into ``model``; rebuild the RoPE tables.

    With ``strict`` any missing, unexpected or mis-shaped key raises ``KeyError`` listing
    them; otherwise matching tensors load and the rest is logged as a warning. A model on
    the meta device takes the source tensors as they are (``assign``).
    """
    state = read_state_dict(source)
    report = match_state_dict(model, state, allow_missing)
    if not report.ok:
        if strict:
            raise KeyError(f"weights do not match the model ({report.describe()}); check model.preset, "
                           "model.with_r and the autoencoder/semantic settings that fix its shapes")
        logger.warning("partial weight load: %s", report.describe())
    params = model.state_dict()
    usable = {k: v for k, v in state.items() if k in params and v.shape == params[k].shape
              and not k.startswith(DERIVED_PREFIXES)}
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(usable, strict=False, assign=on_meta)
    for module in model.modules():
        if isinstance(module, RoPE2D):
            module.reset_buffers()
    logger.info("loaded weights: %s", report.describe())
    return report
