"""manifest.json / sizes.json for pack.py: per-part summaries from shard records, and their merge.

A single-part run writes ``manifest.json`` directly. Part ``I`` of an N-part run writes ``manifest-partI.json``
(``I`` as 4 digits); :func:`merge_manifests` combines all N into ``manifest.json`` + ``sizes.json``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from data_tools.shards import STATE_DIR, ShardRecord, write_json_atomic

PART_RE = re.compile(r"manifest-part(\d{4})\.json")


def part_manifest_name(part: int) -> str:
    """File name of part ``part``'s manifest."""
    return f"manifest-part{part:04d}.json"


def _sorted_hist(hist: Counter) -> dict[str, int]:
    return {k: hist[k] for k in sorted(hist, key=int)}


def summarize(records: list[ShardRecord], tail: ShardRecord, inputs: int, header: dict) -> dict:
    """Manifest of one part from its shard records plus the skips met after the last shard."""
    every = [*records, tail]
    skipped = [s for r in every for s in r.skipped]
    hist: Counter = Counter()
    for r in every:
        hist.update(r.size_histogram)
    return {
        **header,
        "inputs": inputs,
        "source_images": sum(len(r.hashes) for r in every),
        "samples": sum(r.samples for r in records),
        "total_pixels": sum(r.pixels for r in records),
        "total_bytes": sum(r.bytes for r in records),
        "skipped_count": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(s["reason"].split(":")[0] for s in skipped).items())),
        "duplicates_count": sum(len(r.duplicates) for r in every),
        "size_histogram": _sorted_hist(hist),
        "shards": [{"name": r.shard, "samples": r.samples, "bytes": r.bytes} for r in records],
        "skipped": skipped,
        "duplicates": [d for r in every for d in r.duplicates],
    }


def write_manifest(out_dir: Path, manifest: dict, name: str = "manifest.json") -> None:
    """Write a manifest; for the final ``manifest.json`` also ``sizes.json`` ({shard: samples})."""
    write_json_atomic(out_dir / name, manifest, sort_keys=False)
    if name == "manifest.json":
        write_json_atomic(out_dir / "sizes.json", {s["name"]: s["samples"] for s in manifest["shards"]})


def _cross_part_duplicates(out_dir: Path, parts: list[dict]) -> list[dict]:
    """Images kept by more than one part (dedup runs within a part); they stay in the shards, listed here."""
    seen: dict[str, list[str]] = {}
    for part in parts:
        for shard in part["shards"]:
            rec = json.loads((out_dir / STATE_DIR / (shard["name"][:-4] + ".json")).read_text())
            for source_hash, path in rec["hashes"].items():
                seen.setdefault(source_hash, []).append(path)
    dups = []
    for paths in seen.values():
        first = min(paths)
        dups.extend({"path": p, "duplicate_of": first} for p in sorted(paths) if p != first)
    return sorted(dups, key=lambda d: d["path"])


def _load_parts(out_dir: Path) -> list[dict]:
    """All part manifests in ``out_dir``, checked to belong to one complete run."""
    found = {int(m.group(1)): p for p in out_dir.iterdir() if (m := PART_RE.fullmatch(p.name))}
    if not found:
        raise FileNotFoundError(f"no manifest-partNNNN.json in {out_dir}; run the pack parts first (--out)")
    parts = [json.loads(found[i].read_text()) for i in sorted(found)]
    num_parts, run = parts[0]["num_parts"], parts[0]["run_fingerprint"]
    if any(p["run_fingerprint"] != run or p["num_parts"] != num_parts for p in parts):
        raise ValueError(f"part manifests in {out_dir} come from different runs (inputs/options/--num-parts); "
                         "pack into a fresh --out")
    missing = sorted(set(range(num_parts)) - set(found))
    if missing:
        raise ValueError(f"parts {missing} of --num-parts {num_parts} have not finished in {out_dir}; "
                         "run them (same command with --part I) before --merge-manifests")
    return parts


def merge_manifests(out_dir: Path) -> dict:
    """Combine every part manifest in ``out_dir`` into manifest.json + sizes.json; returns the manifest."""
    parts = _load_parts(out_dir)
    hist: Counter = Counter()
    for p in parts:
        hist.update(p["size_histogram"])
    skipped = [s for p in parts for s in p["skipped"]]
    merged = {k: parts[0][k] for k in ("options", "num_parts", "run_fingerprint")}
    for key in ("inputs", "source_images", "samples", "total_pixels", "total_bytes", "skipped_count",
                "duplicates_count"):
        merged[key] = sum(p[key] for p in parts)
    merged["skipped_by_reason"] = dict(sorted(Counter(s["reason"].split(":")[0] for s in skipped).items()))
    merged["size_histogram"] = _sorted_hist(hist)
    merged["shards"] = [s for p in parts for s in p["shards"]]
    merged["skipped"] = sorted(skipped, key=lambda s: s["path"])
    merged["duplicates"] = sorted((d for p in parts for d in p["duplicates"]), key=lambda d: d["path"])
    merged["cross_part_duplicates"] = _cross_part_duplicates(out_dir, parts)
    write_manifest(out_dir, merged)
    return merged
