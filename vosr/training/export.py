"""The exported-weights format: one ``.safetensors`` with the resolved run config in its metadata.

``save_export`` writes the transformer's state dict (usually the EMA) and ``vosr_config`` =
JSON of ``vosr.config.to_dict(config)`` (plus optional string extras such as the step)
atomically. ``load_export`` reads it back; a file without ``vosr_config`` (a released VOSR
checkpoint) returns ``None`` for the config, and the caller must supply one (``--config``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vosr.config import RunConfig, from_dict, to_dict
from vosr.config.core import drop_unknown

if TYPE_CHECKING:  # torch is imported where tensors are handled, so the CLIs can check paths quickly
    import torch

logger = logging.getLogger(__name__)

CONFIG_KEY = "vosr_config"
FORMAT_KEY = "vosr_format"
FORMAT_VERSION = "1"
EXPORT_NAME = "ema.safetensors"
"""The export a training run writes into its run folder."""
R_EMBEDDER_PREFIX = "r_embedder."
"""Weights of the ``r`` time input: present exactly in one-step (student) models."""
OMEGA_EMBEDDER_PREFIX = "omega_embedder."
"""Weights of the guidance input: present exactly in students distilled over ``distill.guidance_range``."""
GUIDANCE_RANGE_KEY = "vosr_guidance_range"
"""Metadata of a guidance-conditioned student: JSON ``[lo, hi]``, the omega range it was distilled over."""


def export_file(source: str | Path, key: str = "-c/--checkpoint") -> Path:
    """An export named directly, or a run folder holding one (``ema.safetensors``); raises naming ``key``."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / EXPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{key}={source}: no exported weights at {path} "
                                f"(give a run's {EXPORT_NAME} or its run folder)")
    return path


def save_export(path: str | Path, state_dict: dict[str, torch.Tensor], config: RunConfig,
                extra: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` + config metadata to ``path`` (tmp file, then ``os.replace``); return the path.

    Tensors are made contiguous and moved to the CPU; a tensor sharing storage with an earlier
    one is cloned (safetensors refuses aliases); others are written without a copy. ``extra``
    values must be strings; they may not use the reserved keys. The recorded ``model.with_r``
    follows the weights (a student has ``r_embedder`` weights), whatever the run config said.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    extra = dict(extra or {})
    clash = {CONFIG_KEY, FORMAT_KEY, GUIDANCE_RANGE_KEY} & set(extra)
    if clash:
        raise ValueError(f"export extra metadata may not use the reserved keys {sorted(clash)}")
    bad = [k for k, v in extra.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"export extra metadata values must be strings; not for {bad}")
    tensors, storages = {}, set()
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in storages:  # a second view of one storage: copy it
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    if not tensors:
        raise ValueError("save_export: the state dict holds no tensors")
    recorded = to_dict(config)
    recorded["model"]["with_r"] = any(k.startswith(R_EMBEDDER_PREFIX) for k in tensors)
    with_omega = any(k.startswith(OMEGA_EMBEDDER_PREFIX) for k in tensors)
    recorded["model"]["with_omega"] = with_omega
    metadata = {CONFIG_KEY: json.dumps(recorded), FORMAT_KEY: FORMAT_VERSION, **extra}
    if with_omega:
        if config.distill.guidance_range is None:
            raise ValueError("save_export: weights with an omega_embedder need distill.guidance_range in the config")
        metadata[GUIDANCE_RANGE_KEY] = json.dumps([float(v) for v in config.distill.guidance_range])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %d tensors to %s", len(tensors), path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (empty when it has none)."""
    from safetensors import safe_open

    path = _check_file(path)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_guidance_range(path: str | Path) -> list[float] | None:
    """``[lo, hi]`` stored in a guidance-conditioned student's export, None for any other file."""
    raw = read_metadata(path).get(GUIDANCE_RANGE_KEY)
    return None if raw is None else [float(v) for v in json.loads(raw)]


def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], RunConfig | None]:
    """Read an export: (state dict on the CPU, its ``RunConfig`` or None for a file without one).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    a readable safetensors file or whose embedded config no longer validates.
    """
    from safetensors.torch import load_file

    path = _check_file(path)
    try:
        metadata = read_metadata(path)
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"checkpoint {path} is not a readable .safetensors file ({e})") from e
    raw = metadata.get(CONFIG_KEY)
    if raw is None:
        logger.info("%s has no %s metadata (a released checkpoint); a config must be given", path, CONFIG_KEY)
        return state, None
    data, dropped = drop_unknown(RunConfig, json.loads(raw))
    if dropped:
        logger.warning("%s: ignoring config keys this vosr does not know (written by another version): %s",
                       path, ", ".join(dropped))
    try:
        config = from_dict(RunConfig, data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the config embedded in {path} does not validate ({e}); pass --config to override") from e
    return state, config


def _check_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass an exported .safetensors (-c/--checkpoint)")
    return path
