"""Decode every sample of WebDataset shards and report the bad ones (``pack.py --verify``)."""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vosr.images import IMAGE_EXTS

DECODABLE = frozenset(ext.lstrip(".") for ext in IMAGE_EXTS)  # tar member extensions carry no dot


@dataclass
class ShardReport:
    """Verification result of one shard."""

    shard: str
    samples: int = 0
    bad: list[str] = field(default_factory=list)


def _check_sample(key: str, files: dict[str, bytes]) -> str | None:
    """Why sample ``key`` is bad (missing part, undecodable image, hash/size mismatch), or None."""
    images = [ext for ext in files if ext.lower() in DECODABLE]
    if len(images) != 1 or "json" not in files:
        return f"{key}: expected one image and one json, found {sorted(files)}"
    data = files[images[0]]
    try:
        meta = json.loads(files["json"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.load()
    except Exception as e:  # noqa: BLE001 - any failure makes the sample bad
        return f"{key}: {type(e).__name__}: {e}"
    if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        return f"{key}: sha256 of {key}.{images[0]} differs from its json"
    if (meta.get("width"), meta.get("height")) not in ((None, None), img.size):
        return f"{key}: decoded size {img.size} != json {meta.get('width')}x{meta.get('height')}"
    return None


def verify_shard(path: Path) -> ShardReport:
    """Read a tar shard sample by sample (files grouped by key) and decode each image."""
    report = ShardReport(shard=str(path))
    key, files = None, {}

    def close_sample() -> None:
        if key is not None:
            report.samples += 1
            if (reason := _check_sample(key, files)) is not None:
                report.bad.append(f"{path.name}: {reason}")

    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name_key, _, ext = Path(member.name).name.partition(".")
                if name_key != key:
                    close_sample()
                    key, files = name_key, {}
                files[ext] = tar.extractfile(member).read()
        close_sample()
    except (tarfile.TarError, OSError, EOFError) as e:
        report.bad.append(f"{path.name}: unreadable tar after {report.samples} samples: {e}")
    return report


def _expected_counts(paths: list[Path]) -> dict[Path, int]:
    """Sample counts from the ``sizes.json`` beside each shard, where present."""
    expected: dict[Path, int] = {}
    for folder in {p.parent for p in paths}:
        sizes = folder / "sizes.json"
        if sizes.is_file():
            expected.update({folder / name: n for name, n in json.loads(sizes.read_text()).items()})
    return expected


def verify_shards(paths: list[Path], workers: int = 1) -> list[ShardReport]:
    """Verify shards (in parallel with ``workers`` > 1); counts are checked against sizes.json."""
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            reports = pool.map(verify_shard, paths, chunksize=1)
    else:
        reports = [verify_shard(p) for p in paths]
    expected = _expected_counts(paths)
    for path, report in zip(paths, reports):
        n = expected.get(path)
        if n is not None and n != report.samples and not report.bad:
            report.bad.append(f"{path.name}: {report.samples} samples, sizes.json says {n}")
    return reports


def find_shards(targets: list[str]) -> list[Path]:
    """Tar files named directly, or every ``*.tar`` in named folders, sorted."""
    paths: list[Path] = []
    for t in targets:
        p = Path(t)
        if p.is_dir():
            paths.extend(sorted(p.glob("*.tar")))
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"--verify target {t!r} does not exist; pass shard folders or .tar files")
    if not paths:
        raise FileNotFoundError(f"no *.tar shards in {targets}; pass the --out folder of a pack run")
    return paths
