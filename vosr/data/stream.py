"""HR crops streamed from WebDataset tar shards: an infinite weighted training mix and fixed validation sets.

Model-agnostic: every batch is ``{"hr": (B, 3, S, S) float32 in [0, 1], "key": [B] str}`` with
``S = data.crop_size`` and keys ``"<shard stem>/<sample key>"``. CPU workers read the tars with
webdataset's tar reader, decode with PIL (RGB), upscale images whose short side is below ``S``
(bicubic), crop, flip and batch.

Training (``build_train_stream``) never ends, so every rank always gets batches. Each loader
worker of each rank is one *slot*; every source's shards are permuted by ``(seed, restart)`` and
dealt out over the slots (all slots share all shards when a source has fewer shards than
slots, with a warning). A slot walks its shards in a fresh random order each pass, mixes the
sources by weight per sample and shuffles through a ``data.shuffle_buffer`` buffer. All of a
slot's randomness comes from one ``torch.Generator`` seeded by ``(seed, rank, worker, restart)``,
so a requeued job (``restart + 1``) sees a new stream and a re-run with the same four numbers
sees the same one. Corrupt samples and broken shards are skipped, counted and logged.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator

from vosr.config.run import DataConfig
from vosr.data.errors import SkipCounts, SkipHandler
from vosr.data.mix import expand_shards, log_sources, resolve_sources

logger = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
"""Sample entries read as the image, in order of preference."""
SHUFFLE_INITIAL = 100
"""Samples buffered before the first one leaves the shuffle buffer (webdataset's default ``initial``):
start fast, then grow to the full ``data.shuffle_buffer`` by reading two samples per sample emitted."""
LOG_EVERY = 100
"""Skips of one kind per worker between two log lines (the first is always logged)."""

ErrorHandler = Callable[[BaseException, str], bool]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes integer ``parts`` (e.g. seed, rank, worker, restart) via ``np.random.SeedSequence``."""
    entropy = [int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def read_shard(url: str, on_error: ErrorHandler) -> Iterator[dict[str, Any]]:
    """Samples ``{"key", "__key__", "__url__", ext: bytes}`` of one tar shard.

    An unreadable or truncated shard goes to ``on_error`` once; the samples read before the break
    are kept and the rest of that shard is lost (tar streams cannot resynchronise).
    """
    stem = os.path.basename(url).removesuffix(".tar")
    stream = None
    try:
        stream = gopen(url)
        files = ({**entry, "__url__": url} for entry in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            sample["key"] = f"{stem}/{sample['__key__']}"
            yield sample
    except Exception as exn:  # any read failure skips the shard, by design
        on_error(exn, f"in shard {url}")
    finally:
        if stream is not None:
            stream.close()


def open_image(sample: dict[str, Any]) -> Image.Image:
    """The decoded (loaded) PIL image of a sample; ValueError/OSError when it is missing or corrupt."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {sample.get('key')} has no image entry ({', '.join(IMAGE_EXTS)})")
    img = Image.open(io.BytesIO(sample[ext]))
    img.load()
    return img


def crop_hr(img: Image.Image, size: int, gen: torch.Generator | None = None, flip: bool = False) -> np.ndarray:
    """(size, size, 3) uint8 RGB crop: bicubic upscale so the short side >= size, then random crop
    (``gen`` given) or centre crop (``gen`` None), then random horizontal/vertical flips if ``flip``."""
    w, h = img.size
    short = min(w, h)
    if short < size:
        w, h = max(size, -(-w * size // short)), max(size, -(-h * size // short))  # integer ceil
        img = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    if gen is None:
        x, y = (w - size) // 2, (h - size) // 2
    else:
        x = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        y = int(torch.randint(0, h - size + 1, (1,), generator=gen))
    crop = np.asarray(img.crop((x, y, x + size, y + size)).convert("RGB"))  # (S, S, 3)
    if flip and gen is not None:
        coins = torch.rand(2, generator=gen)
        if coins[0] < 0.5:
            crop = crop[:, ::-1]
        if coins[1] < 0.5:
            crop = crop[::-1]
    return np.ascontiguousarray(crop)


def to_batch(crops: list[np.ndarray], keys: list[str]) -> dict[str, Any]:
    """Stack (S, S, 3) uint8 crops into ``{"hr": (B, 3, S, S) float32 in [0, 1], "key": keys}``."""
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
    return {"hr": hr.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0), "key": list(keys)}


def _crops(samples: Iterable[dict[str, Any]], size: int, gen: torch.Generator | None, flip: bool,
           on_error: ErrorHandler) -> Iterator[tuple[str, np.ndarray]]:
    """(key, crop) per decodable sample; the others go to ``on_error``."""
    for sample in samples:
        try:
            crop = crop_hr(open_image(sample), size, gen, flip)
        except Exception as exn:  # PIL raises many types for corrupt bytes
            on_error(exn, f"sample {sample.get('key')}")
            continue
        yield sample["key"], crop


def _batched(crops: Iterable[tuple[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of ``batch_size`` crops; a final short batch is kept."""
    it = iter(crops)
    while chunk := list(itertools.islice(it, batch_size)):
        keys, arrays = zip(*chunk, strict=True)
        yield to_batch(list(arrays), list(keys))


def _shuffled(samples: Iterator[Any], size: int, gen: torch.Generator) -> Iterator[Any]:
    """Shuffle buffer of up to ``size`` items (no shuffling when size <= 1)."""
    if size <= 1:
        yield from samples
        return
    buf: list[Any] = []
    for sample in samples:
        buf.append(sample)
        if len(buf) < size and (extra := next(samples, None)) is not None:
            buf.append(extra)
        if len(buf) >= min(size, SHUFFLE_INITIAL):
            j = int(torch.randint(0, len(buf), (1,), generator=gen))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        yield buf.pop(int(torch.randint(0, len(buf), (1,), generator=gen)))


def _resampled(shards: list[str], gen: torch.Generator, on_error: ErrorHandler) -> Iterator[dict[str, Any]]:
    """Endless samples of ``shards``, walked in a fresh random order each pass."""
    while True:
        found = 0
        for i in torch.randperm(len(shards), generator=gen).tolist():
            for sample in read_shard(shards[i], on_error):
                found += 1
                yield sample
        if found == 0:
            raise ValueError(f"none of the {len(shards)} shards ({shards[0]} ...) gave a sample (see the skip "
                             "log); fix or remove that source in data.train / data.mix_file")


def _mixed(streams: list[Iterator[dict[str, Any]]], weights: torch.Tensor,
           gen: torch.Generator) -> Iterator[dict[str, Any]]:
    """Per sample, pick a source with probability proportional to ``weights``."""
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        yield next(streams[int(torch.multinomial(weights, 1, generator=gen))])


def _worker() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _slot_shards(shards: list[str], slot: int, num_slots: int) -> list[str]:
    """This slot's share of ``shards`` (all of them when there are fewer shards than slots)."""
    return shards[slot::num_slots] if len(shards) >= num_slots else shards


class _TrainSamples(IterableDataset):
    """Endless batches of random crops for one rank; each worker is one slot of the shard split."""

    def __init__(self, sources: list[list[str]], weights: list[float], cfg: DataConfig,
                 ids: dict[str, int], counts: SkipCounts) -> None:
        super().__init__()
        self.sources, self.cfg, self.ids, self.counts = sources, cfg, ids, counts
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        rank, world_size = self.ids["rank"], self.ids["world_size"]
        slot, num_slots = rank * num_workers + worker, world_size * num_workers
        gen = torch.Generator().manual_seed(derive_seed(self.ids["seed"], rank, worker, self.ids["restart"]))
        on_read = SkipHandler(self.counts, "read", worker, LOG_EVERY)
        on_decode = SkipHandler(self.counts, "decode", worker, LOG_EVERY)
        streams = [_resampled(_slot_shards(shards, slot, num_slots), gen, on_read) for shards in self.sources]
        samples = _shuffled(_mixed(streams, self.weights, gen), self.cfg.shuffle_buffer, gen)
        crops = _crops(samples, self.cfg.crop_size, gen, self.cfg.flip, on_decode)
        yield from _batched(crops, self.cfg.batch_size)


class _ValSamples(IterableDataset):
    """Centre crops of this rank's and worker's share of the validation shards, read once in order."""

    def __init__(self, shards: list[str], cfg: DataConfig, rank: int, world_size: int, batch_size: int) -> None:
        super().__init__()
        self.shards, self.cfg, self.rank, self.world_size, self.batch_size = shards, cfg, rank, world_size, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        counts = SkipCounts(1)
        on_read, on_decode = SkipHandler(counts, "read", 0, LOG_EVERY), SkipHandler(counts, "decode", 0, LOG_EVERY)
        samples = (s for shard in self.shards[slot::num_slots] for s in read_shard(shard, on_read))
        yield from _batched(_crops(samples, self.cfg.crop_size, None, False, on_decode), self.batch_size)


class TrainStream:
    """Infinite iterable of training batches ``{"hr": (B, 3, S, S) float in [0, 1], "key": [B] str}`` for one rank.

    Iterating again continues the same stream. ``state_dict()`` goes into checkpoints; a resumed
    job builds its stream with ``restart = state["restart"] + 1`` so it does not replay old samples.
    """

    seed: int
    restart: int
    batches: int

    def __init__(self, dataset: _TrainSamples, num_workers: int, seed: int, restart: int) -> None:
        self._counts = dataset.counts
        self.seed, self.restart, self.batches = seed, restart, 0
        # batch_size=None: workers batch themselves. A private generator keeps the loader from
        # drawing its base seed from (and so shifting) the global torch RNG.
        self._loader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                  persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                                  generator=torch.Generator())
        self._batch_iter: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict]:
        """Batches forever (workers start on the first call)."""
        if self._batch_iter is None:
            self._batch_iter = iter(self._loader)
        while True:
            batch = next(self._batch_iter)
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        """``{"seed", "restart", "batches"}`` as plain ints, for checkpoints."""
        return {"seed": int(self.seed), "restart": int(self.restart), "batches": int(self.batches)}

    def skipped(self) -> dict[str, int]:
        """Skips so far, summed over workers: ``decode`` (corrupt samples), ``read`` (broken shards)."""
        return self._counts.totals()

    def close(self) -> None:
        """Stop the worker processes (a later iteration starts them again, from the start of the stream)."""
        self._batch_iter = None


def build_train_stream(cfg: DataConfig, *, rank: int, world_size: int, seed: int, restart: int = 0) -> TrainStream:
    """The infinite training stream of ``rank`` in ``world_size``; see the module docstring for the seeding."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if restart < 0:
        raise ValueError(f"restart={restart} must be >= 0 (the requeue counter)")
    sources = resolve_sources(cfg)
    log_sources(sources)
    order = torch.Generator().manual_seed(derive_seed(seed, restart))  # the same on every rank and worker
    shard_lists = [[shards[i] for i in torch.randperm(len(shards), generator=order).tolist()]
                   for shards, _ in sources]
    num_slots = world_size * max(1, cfg.num_workers)
    for shards in shard_lists:
        if len(shards) < num_slots:
            logger.warning("a data source has %d shards < world_size x data.num_workers = %d: every worker "
                           "resamples all of them (fine for training; repack into more shards to split them)",
                           len(shards), num_slots)
    ids = {"seed": seed, "rank": rank, "world_size": world_size, "restart": restart}
    dataset = _TrainSamples(shard_lists, [w for _, w in sources], cfg, ids, SkipCounts(max(1, cfg.num_workers)))
    logger.info("train stream: rank %d/%d, seed %d, restart %d, %d sources, %d workers", rank, world_size,
                seed, restart, len(sources), cfg.num_workers)
    return TrainStream(dataset, cfg.num_workers, seed, restart)


def build_val_batches(cfg: DataConfig, *, batch_size: int | None = None) -> list[dict]:
    """Centre crops of the first ``data.val_size`` images of ``data.val`` (sorted shard order) as batches;
    ``[]`` when ``data.val`` is None. Read in this process, so every rank gets the same fixed set."""
    if cfg.val is None:
        return []
    counts = SkipCounts(1)
    on_read, on_decode = SkipHandler(counts, "read", 0, LOG_EVERY), SkipHandler(counts, "decode", 0, LOG_EVERY)
    samples = (s for shard in expand_shards(cfg.val, "data.val") for s in read_shard(shard, on_read))
    crops = itertools.islice(_crops(samples, cfg.crop_size, None, False, on_decode), cfg.val_size)
    batches = list(_batched(crops, batch_size or cfg.batch_size))
    found = sum(len(b["key"]) for b in batches)
    if found < cfg.val_size:
        logger.warning("data.val gave %d of data.val_size=%d images", found, cfg.val_size)
    return batches


def build_val_stream(cfg: DataConfig, *, rank: int, world_size: int, batch_size: int | None = None) -> DataLoader:
    """One ordered pass over this rank's share of all of ``data.val`` (no resampling, no duplicates
    across ranks and workers); ranks may get different numbers of batches."""
    if cfg.val is None:
        raise ValueError("data.val is unset; set it to the validation shards")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    shards = expand_shards(cfg.val, "data.val")
    workers = max(1, cfg.num_workers)
    if len(shards) < world_size * workers:
        raise ValueError(f"data.val has {len(shards)} shards, fewer than world_size x data.num_workers = "
                         f"{world_size} x {workers}: some would read nothing. Lower data.num_workers or "
                         f"repack data.val into >= {world_size * workers} shards")
    dataset = _ValSamples(shards, cfg, rank, world_size, batch_size or cfg.batch_size)
    return DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator())
