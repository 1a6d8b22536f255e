"""Dataset mixes: shard patterns and weights from ``DataConfig.train`` and ``DataConfig.mix_file``.

A source is a shard glob (``/data/a/*.tar``), a brace pattern (``/data/a/a-{000000..000099}.tar``),
a folder of ``*.tar`` or one tar file. URLs that webdataset's ``gopen`` opens (``pipe:...``,
``s3://...``) are brace-expanded but not checked. The mix file holds the reference's
``path, weight`` lines; blank lines and ``#`` comments are ignored, and a relative path is
taken relative to the mix file's folder.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from pathlib import Path

from braceexpand import braceexpand

from vosr.config.run import DataConfig

logger = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_URL = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)")


def expand_shards(pattern: str, key: str) -> list[str]:
    """Sorted shard paths of one source pattern; FileNotFoundError names config ``key`` when nothing matches."""
    pattern = os.path.expanduser(pattern.strip())
    if _URL.match(pattern):
        return list(braceexpand(pattern))
    if os.path.isdir(pattern):
        shards = sorted(glob.glob(os.path.join(glob.escape(pattern), "*.tar")))
        if not shards:
            raise FileNotFoundError(f"{key}: folder {pattern!r} holds no *.tar shards; change {key}")
        return shards
    shards, missing = set(), []
    for part in braceexpand(pattern):
        if _GLOB_CHARS.search(part):
            shards.update(p for p in glob.glob(part) if os.path.isfile(p))
        elif os.path.isfile(part):
            shards.add(part)
        else:
            missing.append(part)
    if missing:
        raise FileNotFoundError(f"{key}: {len(missing)} shard(s) of {pattern!r} do not exist "
                                f"(first: {missing[0]!r}); change {key}")
    if not shards:
        raise FileNotFoundError(f"{key}: no shard matches {pattern!r}; change {key}")
    return sorted(shards)


def parse_mix_file(path: str) -> list[tuple[str, float]]:
    """``(pattern, weight)`` per ``path, weight`` line of a mix file; errors name ``data.mix_file``."""
    mix = Path(path).expanduser()
    if not mix.is_file():
        raise FileNotFoundError(f"data.mix_file {path!r} does not exist; change data.mix_file")
    entries = []
    for number, raw in enumerate(mix.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, sep, weight_text = line.rpartition(",")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = float("nan")
        if not sep or not pattern.strip() or not weight > 0:
            raise ValueError(f"data.mix_file {path} line {number}: expected 'path, weight' with weight > 0, "
                             f"got {raw.strip()!r}; fix that line or change data.mix_file")
        pattern = os.path.expanduser(pattern.strip())
        if not _URL.match(pattern) and not os.path.isabs(pattern):
            pattern = str(mix.parent / pattern)
        entries.append((pattern, weight))
    if not entries:
        raise ValueError(f"data.mix_file {path} has no 'path, weight' lines; change data.mix_file")
    return entries


def resolve_sources(cfg: DataConfig) -> list[tuple[list[str], float]]:
    """Shard lists and (unnormalised) weights of the training mix: ``cfg.train`` then ``cfg.mix_file`` lines."""
    sources = [(expand_shards(src.shards, f"data.train[{i}].shards"), float(src.weight))
               for i, src in enumerate(cfg.train)]
    if cfg.mix_file is not None:
        for number, (pattern, weight) in enumerate(parse_mix_file(cfg.mix_file), start=1):
            sources.append((expand_shards(pattern, f"data.mix_file ({cfg.mix_file}, entry {number})"), weight))
    if not sources:
        raise ValueError("no training data: data.train is empty and data.mix_file is unset; set one of them")
    return sources


def source_names(cfg: DataConfig) -> list[str]:
    """How errors name each source of :func:`resolve_sources`, in the same order (the config key and pattern)."""
    names = [f"data.train[{i}].shards={src.shards!r}" for i, src in enumerate(cfg.train)]
    if cfg.mix_file is not None:
        names += [f"data.mix_file {cfg.mix_file} entry {number} ({pattern!r})"
                  for number, (pattern, _) in enumerate(parse_mix_file(cfg.mix_file), start=1)]
    return names


def log_sources(sources: list[tuple[list[str], float]]) -> None:
    """One line per source: shards, samples (from ``sizes.json`` where present), normalised weight."""
    total = sum(weight for _, weight in sources)
    for shards, weight in sources:
        logger.info("data source %s: %d shards, %s samples, weight %.3f", _describe(shards), len(shards),
                    _count_samples(shards), weight / total)


def _describe(shards: list[str]) -> str:
    return shards[0] if len(shards) == 1 else f"{shards[0]} .. {os.path.basename(shards[-1])}"


def _count_samples(shards: list[str]) -> str:
    """Sample count from the ``sizes.json`` files beside the shards (what pack.py writes), or '?'."""
    total = 0
    sizes_by_dir: dict[str, dict[str, int]] = {}
    for shard in shards:
        folder = os.path.dirname(shard)
        if folder not in sizes_by_dir:
            sizes_path = os.path.join(folder, "sizes.json")
            try:
                with open(sizes_path) as f:
                    sizes_by_dir[folder] = json.load(f)
            except (OSError, ValueError):
                sizes_by_dir[folder] = {}
        count = sizes_by_dir[folder].get(os.path.basename(shard))
        if count is None:
            return "?"
        total += int(count)
    return str(total)
