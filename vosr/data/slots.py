"""One slot of the training stream (a loader worker of a rank): its readers, mix, shuffle buffer and position.

A slot reads each source's share of shards in a fresh random order per pass, picks a source per sample by
weight, decodes the sample once into its crops and pushes them into its ``CropShuffler``. All of its
randomness comes from one ``torch.Generator``. Its position is a small plain dict (``state()``): the
generator state, per source the shard order of the current pass, the shard index and the byte offset of the
next sample, and a descriptor per buffered crop (shard, sample offset, crop position and flips). ``load()``
restores it by re-reading only the buffered samples (bounded by the buffer size, not by the steps run), so a
restored slot emits exactly the crops the uninterrupted one would have.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import torch

from vosr.data.crops import (
    CropShuffler,
    CropSpec,
    Item,
    SmallImage,
    cut,
    decode,
    draw_params,
    rows_needed,
    sample_size,
)
from vosr.data.errors import SkipReporter
from vosr.data.shardio import ShardCursor, TarSample, read_sample_at


def gen_state(gen: torch.Generator) -> str:
    """A generator's state as base64 text (json-safe)."""
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")


def set_gen_state(gen: torch.Generator, text: str) -> None:
    """Inverse of :func:`gen_state`."""
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8))


def shard_stem(url: str) -> str:
    """``/x/hr-000001.tar`` -> ``hr-000001`` (the first part of every sample key)."""
    return os.path.basename(url).removesuffix(".tar")


class SourceReader:
    """Endless samples of one source's shards for one slot, walked in a fresh random order each pass."""

    shards: list[str]
    name: str
    perm: list[int]
    pos: int
    offset: int
    usable: int

    def __init__(self, shards: list[str], name: str) -> None:
        self.shards, self.name = shards, name
        self.perm, self.pos, self.offset, self.usable = [], 0, 0, 0
        self._cursor: ShardCursor | None = None

    def next(self, gen: torch.Generator, report: SkipReporter) -> tuple[int, TarSample]:
        """(shard index, sample); a shard that breaks off is reported and left for the next one."""
        while True:
            if self._cursor is None:
                if self.pos >= len(self.perm):
                    if self.perm and self.usable == 0:
                        raise ValueError(f"{self.name}: a whole pass over its {len(self.shards)} shards of this "
                                         "worker gave no usable sample (see skipped.jsonl); fix or remove it")
                    self.perm = torch.randperm(len(self.shards), generator=gen).tolist()
                    self.pos, self.offset, self.usable = 0, 0, 0
                self._cursor = ShardCursor(self.shards[self.perm[self.pos]], self.offset)
            shard = self.perm[self.pos]
            try:
                sample = self._cursor.next()
            except Exception as exn:  # any read failure ends the shard, by design
                report("read", self.shards[shard], f"@{self._cursor.offset}", exn)
                sample = None
            if sample is None or self._cursor.offset < 0:
                self._cursor.close()
                self._cursor, self.pos, self.offset = None, self.pos + 1, 0
            else:
                self.offset = self._cursor.offset
            if sample is not None:
                return shard, sample

    def state(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "pos": self.pos, "offset": self.offset, "usable": self.usable}

    def load(self, state: dict[str, Any]) -> None:
        self.close()
        self.perm, self.pos = [int(i) for i in state["perm"]], int(state["pos"])
        self.offset, self.usable = int(state["offset"]), int(state["usable"])

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None


class SlotPipeline:
    """Crops of one slot: ``next()`` gives ``(crop (S, S, 3) uint8, key)`` forever."""

    spec: CropSpec
    readers: list[SourceReader]
    report: SkipReporter

    def __init__(self, sources: list[list[str]], names: list[str], weights: torch.Tensor, spec: CropSpec,
                 capacity: int, gen: torch.Generator, report: SkipReporter) -> None:
        self.spec, self.report, self._gen, self._weights = spec, report, gen, weights
        self.readers = [SourceReader(shards, name) for shards, name in zip(sources, names, strict=True)]
        self.shuffler = CropShuffler(capacity, gen)

    def _pick(self) -> int:
        if len(self.readers) == 1:
            return 0
        return int(torch.multinomial(self._weights, 1, generator=self._gen))

    def _fill(self) -> list[Item]:
        """The crops of the next sample that decodes."""
        while True:
            src = self._pick()
            reader = self.readers[src]
            shard, sample = reader.next(self._gen, self.report)
            url = reader.shards[shard]
            try:
                w, h = sample_size(sample.files, self.spec)
            except SmallImage as exn:
                self.report("small", url, sample.key, str(exn))
                continue
            except Exception as exn:  # PIL raises many types for corrupt bytes
                self.report("decode", url, sample.key, exn)
                continue
            # Drawn before decoding (from the header size): the decode can stop at the lowest crop.
            params = draw_params(w, h, self.spec.per_image, self.spec, self._gen)
            try:
                crops = cut(decode(sample.files, self.spec, rows_needed(params, self.spec.size)), params,
                            self.spec.size)
            except Exception as exn:  # PIL raises many types for corrupt bytes
                self.report("decode", url, sample.key, exn)
                continue
            reader.usable += 1
            key = f"{shard_stem(url)}/{sample.key}"
            return [(crop, key, [src, shard, sample.offset, *p]) for crop, p in zip(crops, params, strict=True)]

    def next(self) -> tuple[Any, str]:
        crop, key, _ = self.shuffler.next(self._fill)
        return crop, key

    def state(self) -> dict[str, Any]:
        """This slot's position (plain json types)."""
        return {"gen": gen_state(self._gen), "readers": [r.state() for r in self.readers],
                "buffer": [desc for _, _, desc in self.shuffler.items], "owed": self.shuffler.owed}

    def load(self, state: dict[str, Any], read: Callable[[str, int], TarSample] = read_sample_at) -> None:
        """Restore a position from :meth:`state`: re-read and re-cut the buffered crops, once per sample."""
        set_gen_state(self._gen, state["gen"])
        for reader, reader_state in zip(self.readers, state["readers"], strict=True):
            reader.load(reader_state)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, (src, shard, offset, *_) in enumerate(state["buffer"]):
            groups.setdefault((src, shard, offset), []).append(i)
        items: list[Any] = [None] * len(state["buffer"])
        for (src, shard, offset), indices in groups.items():  # one decode per sample, one image held at a time
            url = self.readers[src].shards[shard]
            sample = read(url, offset)
            params = [(x, y, bool(a), bool(b)) for x, y, a, b in (state["buffer"][i][3:] for i in indices)]
            img = decode(sample.files, self.spec, rows_needed(params, self.spec.size))
            for i, crop in zip(indices, cut(img, params, self.spec.size), strict=True):
                items[i] = (crop, f"{shard_stem(url)}/{sample.key}", list(state["buffer"][i]))
        self.shuffler.items, self.shuffler.owed = items, float(state["owed"])

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
