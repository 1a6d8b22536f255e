"""Reading WebDataset tar shards sample by sample, with the byte offset of each sample.

A sample is the run of consecutive tar members sharing a key (the member name up to the first dot of its
base name, as webdataset groups them). Its offset is where its first member's header starts, so a reader can
stop anywhere and a later process can reopen the shard *at* that sample (local files seek; URLs that
webdataset's ``gopen`` opens, ``pipe:`` or ``s3://``, are read up to it) and read exactly the same bytes again.
"""
from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from webdataset.gopen import gopen

SKIP_CHUNK = 1 << 20


@dataclass
class TarSample:
    """One sample of a shard: its key, byte offset and members ``{extension: bytes}``."""

    key: str
    offset: int
    files: dict[str, bytes]


def split_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``): key and extension as webdataset splits them."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _open_at(url: str, offset: int) -> BinaryIO:
    """The shard's byte stream positioned at ``offset``."""
    if os.path.isfile(url):
        stream = open(url, "rb")  # noqa: SIM115 - handed to the caller, closed there
        stream.seek(offset)
        return stream
    stream = gopen(url)
    left = offset
    while left > 0:  # not seekable: read up to the offset
        chunk = stream.read(min(left, SKIP_CHUNK))
        if not chunk:
            raise EOFError(f"{url} ends before byte {offset}")
        left -= len(chunk)
    return stream


class ShardCursor:
    """Samples of one shard from a byte offset on; ``offset`` is where the next sample starts (-1: the end)."""

    url: str
    offset: int

    def __init__(self, url: str, offset: int = 0) -> None:
        self.url, self.offset = url, offset
        self._stream: BinaryIO | None = None
        self._members: Iterator[tarfile.TarInfo] | None = None
        self._tar: tarfile.TarFile | None = None
        self._pending: tuple[tarfile.TarInfo, bytes] | None = None
        self._base = offset

    def _next_member(self) -> tuple[tarfile.TarInfo, bytes] | None:
        if self._tar is None:
            self._stream = _open_at(self.url, self.offset)
            self._tar = tarfile.open(fileobj=self._stream, mode="r|")
            self._members = iter(self._tar)
        for info in self._members:
            if info.isfile():
                return info, self._tar.extractfile(info).read()
        return None

    def next(self) -> TarSample | None:
        """The next sample, or None at the end of the shard; raises on a broken tar (the cursor is then done)."""
        if self.offset < 0:
            return None
        first = self._pending or self._next_member()
        self._pending = None
        if first is None:
            self.close()
            self.offset = -1
            return None
        info, data = first
        key, ext = split_name(info.name)
        sample = TarSample(key=key, offset=self._base + info.offset, files={ext: data})
        while (member := self._next_member()) is not None:
            member_key, member_ext = split_name(member[0].name)
            if member_key != key:
                self._pending = member
                self.offset = self._base + member[0].offset
                return sample
            sample.files[member_ext] = member[1]
        self.close()
        self.offset = -1  # past the end
        return sample

    def close(self) -> None:
        """Release the file (the cursor cannot read on)."""
        if self._tar is not None:
            self._tar.close()
        if self._stream is not None:
            self._stream.close()
        self._tar = self._stream = self._members = None


def read_sample_at(url: str, offset: int) -> TarSample:
    """The one sample that starts at ``offset`` of shard ``url``."""
    cursor = ShardCursor(url, offset)
    try:
        sample = cursor.next()
    finally:
        cursor.close()
    if sample is None:
        raise EOFError(f"no sample at byte {offset} of {url}")
    return sample


def iter_shard(url: str) -> Iterator[TarSample]:
    """Every sample of one shard, in order."""
    cursor = ShardCursor(url)
    try:
        while (sample := cursor.next()) is not None:
            yield sample
    finally:
        cursor.close()
