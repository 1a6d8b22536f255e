"""Crash-safe shard writing for pack.py: ``.tmp`` then ``os.replace``, one state record per finished shard.

A shard is *finished* when both its tar and its record (``.pack-state/<stem>.json``) exist and the tar has the
recorded size. The record stores the resume cursor ``(input position, sample index)`` of the first sample that
did not go into the shard, so a re-run can continue after the last finished shard without redoing it.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.samples import Sample

STATE_DIR = ".pack-state"
TAR_BLOCK = 512


def tar_member_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a ustar archive: header block + payload padded to 512."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def tar_file_bytes(members: int) -> int:
    """Final archive size: members + two zero end blocks, padded to tarfile.RECORDSIZE (see TarFile.close)."""
    total = members + 2 * TAR_BLOCK
    return -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def write_json_atomic(path: Path, obj: object, sort_keys: bool = True) -> None:
    """Write json to a unique temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # pid: parts merging at once never share a tmp
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=sort_keys))
    os.replace(tmp, path)


def short_side_bucket(width: int, height: int) -> str:
    """Power-of-two bucket of the short side: '512' means 512 <= short side < 1024."""
    return str(1 << max(min(width, height), 1).bit_length() - 1)


@dataclass
class ShardRecord:
    """What went into one shard (and which skips/duplicates were met while it was open)."""

    shard: str = ""
    samples: int = 0
    bytes: int = 0
    pixels: int = 0
    cursor: tuple[int, int] = (0, 0)
    fingerprint: str = ""
    size_histogram: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain dict for json (cursor as a list)."""
        return {**self.__dict__, "cursor": list(self.cursor)}


class ShardWriter:
    """Fills ``stem_fmt.format(i) + '.tar'`` shards in order under sample-count and byte limits."""

    out_dir: Path
    stem_fmt: str
    max_samples: int
    max_bytes: int
    fingerprint: str
    index: int
    record: ShardRecord
    records: list[ShardRecord]

    def __init__(self, out_dir: Path, stem_fmt: str, max_samples: int, max_bytes: int, fingerprint: str) -> None:
        self.out_dir, self.stem_fmt, self.fingerprint = out_dir, stem_fmt, fingerprint
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.index, self.records = 0, []
        self.record = ShardRecord(fingerprint=fingerprint)
        self._file: io.BufferedWriter | None = None
        self._tar: tarfile.TarFile | None = None
        self._members = 0
        (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)

    def paths(self, index: int) -> tuple[Path, Path]:
        """(tar path, record path) of shard ``index``."""
        stem = self.stem_fmt.format(index)
        return self.out_dir / f"{stem}.tar", self.out_dir / STATE_DIR / f"{stem}.json"

    def resume(self) -> tuple[int, int]:
        """Load the records of finished shards, drop stale state after them; returns the resume cursor."""
        while True:
            tar_path, rec_path = self.paths(self.index)
            if not (tar_path.is_file() and rec_path.is_file()):
                break
            rec = ShardRecord(**{**json.loads(rec_path.read_text())})
            rec.cursor = tuple(rec.cursor)
            if rec.fingerprint != self.fingerprint:
                raise ValueError(f"{tar_path} was packed from other inputs/options than this run; "
                                 f"pack into a new --out (or delete {self.out_dir}) to start over")
            if tar_path.stat().st_size != rec.bytes:
                break  # replaced or truncated: redo from here
            self.records.append(rec)
            self.index += 1
        self._drop_stale()
        return self.records[-1].cursor if self.records else (0, 0)

    def _drop_stale(self) -> None:
        """Remove this writer's .tmp leftovers and the records of shards that are not finished."""
        stem = re.escape(self.stem_fmt.format(0)[:-6])  # the stem without its 6-digit shard number
        for path in self.out_dir.iterdir():
            if re.fullmatch(stem + r"\d{6}\.tar\.tmp", path.name):
                path.unlink()
        for path in (self.out_dir / STATE_DIR).iterdir():
            m = re.fullmatch(stem + r"(\d{6})\.json(\.\d+\.tmp)?", path.name)
            if m and int(m.group(1)) >= self.index:
                path.unlink()

    def _open(self) -> None:
        tar_path, _ = self.paths(self.index)
        self._file = open(tar_path.with_name(tar_path.name + ".tmp"), "wb")  # noqa: SIM115 - closed in _flush
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._members = 0

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: re-runs give identical bytes
        self._tar.addfile(info, io.BytesIO(data))
        self._members += tar_member_bytes(len(data))

    def add(self, sample: Sample, cursor: tuple[int, int]) -> None:
        """Append a sample (image + json); starts a new shard first when a limit would be passed."""
        meta = json.dumps(sample.meta, sort_keys=True).encode()
        grow = tar_member_bytes(len(sample.data)) + tar_member_bytes(len(meta))
        if self.record.samples and (self.record.samples >= self.max_samples
                                    or tar_file_bytes(self._members + grow) > self.max_bytes):
            self._flush(cursor)
        if self._tar is None:
            self._open()
        self._add_member(f"{sample.key}.{sample.ext}", sample.data)
        self._add_member(f"{sample.key}.json", meta)
        self.record.samples += 1
        self.record.pixels += sample.meta["width"] * sample.meta["height"]

    def note_source(self, source_hash: str, path: str, size: tuple[int, int]) -> None:
        """Record an accepted source image (for dedup on resume and the size histogram)."""
        self.record.hashes[source_hash] = path
        bucket = short_side_bucket(*size)
        self.record.size_histogram[bucket] = self.record.size_histogram.get(bucket, 0) + 1

    def _flush(self, cursor: tuple[int, int]) -> None:
        """Close the open shard, write its record, then move the tar to its final name."""
        tar_path, rec_path = self.paths(self.index)
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        tmp = tar_path.with_name(tar_path.name + ".tmp")
        self.record.shard, self.record.cursor, self.record.bytes = tar_path.name, cursor, tmp.stat().st_size
        write_json_atomic(rec_path, self.record.to_json())  # record first: a tar never exists without one
        os.replace(tmp, tar_path)
        self.records.append(self.record)
        self.record = ShardRecord(fingerprint=self.fingerprint)
        self._tar = self._file = None
        self.index += 1

    def finish(self, end_cursor: tuple[int, int]) -> ShardRecord:
        """Flush the last shard; returns the pending record (skips met after it, when no shard was open)."""
        if self.record.samples:
            self._flush(end_cursor)
        return self.record
