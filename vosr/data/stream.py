"""HR crops streamed from WebDataset tar shards: an infinite weighted training mix and fixed validation sets.

Model-agnostic: a training batch is ``{"hr": (B, 3, S, S) uint8, "key": [B] str}`` with ``S =
data.crop_size`` and keys ``"<shard stem>/<sample key>"``; the trainer moves it to its device and normalises
there (``to_unit``), so the host copies a quarter of the bytes. CPU workers read the tars, decode each sample
once into up to ``data.crops_per_image`` crops (``vosr.data.crops``), convert to RGB, flip, shuffle and
batch. Images smaller than the crop are skipped and counted (``data.small_images: skip``) or upscaled.

Training (``build_train_stream``) never ends, so every rank always gets batches. Each loader worker of each
rank is one *slot* (``vosr.data.slots``); every source's shards are permuted by ``(seed, restart)`` and dealt
out over the slots (all slots share all shards when a source has fewer shards than slots, with a warning).
A slot walks its shards in a fresh random order each pass, mixes the sources by weight per sample and
shuffles crops through a buffer of ``data.shuffle_buffer_mb``. All of a slot's randomness comes from one
``torch.Generator`` seeded by ``(seed, rank, worker, restart)``.

Every batch carries its slot's position, so ``TrainStream.state_dict()`` is the exact position of what the
trainer consumed; ``load_state_dict`` restores it (each slot re-reads only its buffered samples) and the
stream goes on with the very batches an uninterrupted run would have seen. Bad samples are skipped and each
distinct one recorded (``vosr.data.errors``); a source with no usable sample fails at build time.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vosr.config.run import DataConfig
from vosr.data.crops import CropSpec, SmallImage, centre_params, cut, decode, rows_needed, sample_size
from vosr.data.errors import SkipLog, SkipReporter
from vosr.data.mix import expand_shards, log_sources, resolve_sources, source_names
from vosr.data.shardio import iter_shard
from vosr.data.slots import SlotPipeline, shard_stem

logger = logging.getLogger(__name__)

LOG_EVERY = 100
"""Distinct skips per worker between two log lines (the first is always logged)."""
STATE_VERSION = 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes integer ``parts`` (e.g. seed, rank, worker, restart) via ``np.random.SeedSequence``."""
    entropy = [int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def crop_spec(cfg: DataConfig, train: bool = True) -> CropSpec:
    """The crop settings of ``cfg`` (validation: one centre crop, no flips)."""
    return CropSpec(size=cfg.crop_size, per_image=cfg.crops_per_image if train else 1, flip=cfg.flip and train,
                    small=cfg.small_images)


def buffer_crops(cfg: DataConfig) -> int:
    """Crops that ``data.shuffle_buffer_mb`` holds."""
    return max(1, int(cfg.shuffle_buffer_mb * 2**20) // (3 * cfg.crop_size**2))


def to_batch(crops: list[np.ndarray], keys: list[str]) -> dict[str, Any]:
    """Stack (S, S, 3) uint8 crops into ``{"hr": (B, 3, S, S) uint8 (contiguous), "key": keys}``."""
    hr = np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))  # (B, 3, S, S)
    return {"hr": torch.from_numpy(hr), "key": list(keys)}


def to_unit(hr: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float32 in [0, 1], on ``hr``'s device."""
    return hr.to(torch.float32).div_(255.0)


def _worker() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _slot_shards(shards: list[str], slot: int, num_slots: int) -> list[str]:
    """This slot's share of ``shards`` (all of them when there are fewer shards than slots)."""
    return shards[slot::num_slots] if len(shards) >= num_slots else shards


class _TrainSamples(IterableDataset):
    """Endless batches of random crops for one rank; each worker is one slot of the shard split."""

    def __init__(self, sources: list[list[str]], names: list[str], weights: list[float], cfg: DataConfig,
                 ids: dict[str, int]) -> None:
        super().__init__()
        self.sources, self.names, self.cfg, self.ids = sources, names, cfg, ids
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.restart = ids["restart"]
        self.resume: dict[str, Any] = {}
        """Slot positions to start from, by logical slot (str); empty = from the start."""
        self.rotation = 0
        """Loader worker w plays logical slot (w + rotation) % workers, so a resumed loader's first batch
        comes from the slot whose turn it was."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        logical = (worker + self.rotation) % num_workers
        rank, world_size = self.ids["rank"], self.ids["world_size"]
        slot, num_slots = rank * num_workers + logical, world_size * num_workers
        order = torch.Generator().manual_seed(derive_seed(self.ids["seed"], self.restart))  # same on all slots
        sources = [_slot_shards([shards[i] for i in torch.randperm(len(shards), generator=order).tolist()],
                                slot, num_slots) for shards in self.sources]
        gen = torch.Generator().manual_seed(derive_seed(self.ids["seed"], rank, logical, self.restart))
        report = SkipReporter(LOG_EVERY, f" (rank {rank}, worker {logical})")
        pipeline = SlotPipeline(sources, self.names, self.weights, crop_spec(self.cfg),
                                buffer_crops(self.cfg), gen, report)
        if self.resume.get(str(logical)) is not None:
            pipeline.load(self.resume[str(logical)])
        try:
            while True:
                crops, keys = zip(*(pipeline.next() for _ in range(self.cfg.batch_size)), strict=True)
                batch = to_batch(list(crops), list(keys))
                batch.update(_slot=logical, _state=pipeline.state(), _skips=report.take())
                yield batch
        finally:
            pipeline.close()


class _ValSamples(IterableDataset):
    """Centre crops of this rank's and worker's share of the validation shards, read once in order."""

    def __init__(self, shards: list[str], cfg: DataConfig, rank: int, world_size: int, batch_size: int) -> None:
        super().__init__()
        self.shards, self.cfg, self.rank, self.world_size, self.batch_size = shards, cfg, rank, world_size, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        yield from _batched(_centre_crops(self.shards[slot::num_slots], self.cfg), self.batch_size)


def _centre_crops(shards: list[str], cfg: DataConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(key, centre crop) of every usable sample of ``shards`` in order; the others are reported."""
    spec, report = crop_spec(cfg, train=False), SkipReporter(LOG_EVERY, " (validation)")
    for url in shards:
        try:
            for sample in iter_shard(url):
                try:
                    params = centre_params(*sample_size(sample.files, spec), spec)
                    crop = cut(decode(sample.files, spec, rows_needed(params, spec.size)), params, spec.size)[0]
                except Exception as exn:  # PIL raises many types for corrupt bytes
                    report("small" if isinstance(exn, SmallImage) else "decode", url, sample.key, exn)
                    continue
                yield f"{shard_stem(url)}/{sample.key}", crop
        except Exception as exn:  # a broken shard: skip the rest of it
            report("read", url, "", exn)


def _batched(crops: Iterable[tuple[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches of ``batch_size`` crops; a final short batch is kept."""
    it = iter(crops)
    while chunk := list(itertools.islice(it, batch_size)):
        keys, arrays = zip(*chunk, strict=True)
        yield to_batch(list(arrays), list(keys))


WORKER_IGNORED_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
"""Signals a decoding worker ignores: the main process owns them (preemption saves and exits 75), and a
``SIGTERM`` to the whole process group (``scancel``) must not kill the workers under it first."""


def ignore_signals_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: the worker ignores ``WORKER_IGNORED_SIGNALS``."""
    import signal

    for name in WORKER_IGNORED_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class TrainStream:
    """Infinite iterable of training batches ``{"hr": (B, 3, S, S) uint8, "key": [B] str}`` for one rank.

    Iterating again continues the same stream (also after ``close()``). ``state_dict()`` is the position of
    the batches handed out so far, per slot; ``load_state_dict()`` before the first batch resumes there.
    """

    seed: int
    restart: int
    batches: int
    fingerprint: str

    def __init__(self, dataset: _TrainSamples, num_workers: int, seed: int, fingerprint: str) -> None:
        self._dataset, self._num_workers = dataset, num_workers
        self.seed, self.restart, self.batches, self.fingerprint = seed, dataset.restart, 0, fingerprint
        self._slots: dict[str, Any] = {}
        self._next_slot = 0
        self._skips = SkipLog()
        self._loader: DataLoader | None = None
        self._batch_iter: Iterator[dict[str, Any]] | None = None

    def _start(self) -> Iterator[dict[str, Any]]:
        self._dataset.resume, self._dataset.rotation = dict(self._slots), self._next_slot
        # batch_size=None: workers batch themselves. A private generator keeps the loader from
        # drawing its base seed from (and so shifting) the global torch RNG.
        self._loader = DataLoader(self._dataset, batch_size=None, num_workers=self._num_workers,
                                  persistent_workers=self._num_workers > 0, pin_memory=torch.cuda.is_available(),
                                  generator=torch.Generator(), worker_init_fn=ignore_signals_in_worker)
        return iter(self._loader)

    def __iter__(self) -> Iterator[dict]:
        """Batches forever (workers start on the first call)."""
        if self._batch_iter is None:
            self._batch_iter = self._start()
        slots = max(1, self._num_workers)
        while True:
            batch = next(self._batch_iter)
            slot = batch.pop("_slot")
            if slot != self._next_slot:  # the loader hands out its workers' batches in turn; positions rely on it
                raise RuntimeError(f"batch from data worker slot {slot}, expected slot {self._next_slot}")
            self._slots[str(slot)] = batch.pop("_state")
            self._skips.add(batch.pop("_skips"))
            self._next_slot = (self._next_slot + 1) % slots
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The stream's position (plain json types), for checkpoints."""
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint, "seed": int(self.seed),
                "restart": int(self.restart), "batches": int(self.batches), "next_slot": self._next_slot,
                "slots": dict(self._slots)}

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Resume at ``state`` (before the first batch); False, with a warning and no change, when it was
        saved for other data, data settings, seed, rank, world size or worker count."""
        if self._batch_iter is not None:
            raise RuntimeError("TrainStream.load_state_dict must come before the first batch")
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint:
            logger.warning("the saved data position belongs to other data, data settings, seed or world geometry: "
                           "the stream starts afresh (restart %d) instead of resuming exactly", self.restart)
            return False
        self.restart = self._dataset.restart = int(state["restart"])
        self.batches, self._next_slot, self._slots = int(state["batches"]), int(state["next_slot"]), state["slots"]
        return True

    def reseed(self, restart: int) -> None:
        """Start afresh with the stream of requeue count ``restart`` (before the first batch)."""
        if self._batch_iter is not None:
            raise RuntimeError("TrainStream.reseed must come before the first batch")
        self.restart = self._dataset.restart = int(restart)
        self.batches, self._next_slot, self._slots = 0, 0, {}

    def skipped(self) -> dict[str, int]:
        """Distinct skipped samples so far on this rank, per kind (decode, read, small)."""
        return self._skips.counts()

    def take_skips(self) -> list[dict[str, str]]:
        """Records of the distinct skipped samples that came in since the last call."""
        return self._skips.take()

    def close(self) -> None:
        """Stop the worker processes; a later iteration restarts them at the current position."""
        if self._loader is not None and getattr(self._loader, "_iterator", None) is not None:
            self._loader._iterator._shutdown_workers()
        self._loader = self._batch_iter = None


def _fingerprint(cfg: DataConfig, sources: list[tuple[list[str], float]], ids: dict[str, int]) -> str:
    """What a saved position is valid for: the shards and weights, the data settings and the geometry."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("train", "mix_file", "val", "val_size")}
    blob = json.dumps({"sources": sources, "settings": settings, **{k: v for k, v in ids.items() if k != "restart"}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_sources(cfg: DataConfig, sources: list[tuple[list[str], float]], names: list[str]) -> None:
    """Fail now, in one line naming it, for a source none of whose shards gives a usable sample (read in
    order until the first one that decodes and is large enough)."""
    spec = crop_spec(cfg)
    for (shards, _), name in zip(sources, names, strict=True):
        first_problem = "no samples"
        for url in shards:
            try:
                for sample in iter_shard(url):
                    try:
                        decode(sample.files, spec)
                        break
                    except Exception as exn:  # noqa: BLE001 - any failure: try the next sample
                        first_problem = f"{url} {sample.key}: {type(exn).__name__}: {exn}"
                else:
                    continue
                break
            except Exception as exn:  # noqa: BLE001 - an unreadable shard: try the next
                first_problem = f"{url}: {type(exn).__name__}: {exn}"
        else:
            raise ValueError(f"{name}: none of its {len(shards)} shards gives a usable sample (first problem: "
                             f"{first_problem}); fix or remove that source")


def build_train_stream(cfg: DataConfig, *, rank: int, world_size: int, seed: int, restart: int = 0) -> TrainStream:
    """The infinite training stream of ``rank`` in ``world_size``; see the module docstring for the seeding.

    Checks now that every source gives a sample; workers start with the first batch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if restart < 0:
        raise ValueError(f"restart={restart} must be >= 0 (the requeue counter)")
    sources, names = resolve_sources(cfg), source_names(cfg)
    log_sources(sources)
    check_sources(cfg, sources, names)
    num_slots = world_size * max(1, cfg.num_workers)
    for (shards, _), name in zip(sources, names, strict=True):
        if len(shards) < num_slots:
            logger.warning("%s has %d shards < world_size x data.num_workers = %d: every worker resamples all of "
                           "them (fine for training; repack into more shards to split them)", name, len(shards),
                           num_slots)
    ids = {"seed": seed, "rank": rank, "world_size": world_size, "restart": restart,
           "num_workers": max(1, cfg.num_workers)}
    dataset = _TrainSamples([s for s, _ in sources], names, [w for _, w in sources], cfg, ids)
    logger.info("train stream: rank %d/%d, seed %d, restart %d, %d sources, %d workers, %d crops per decode at "
                "most, shuffle buffer %d crops (%g MiB) per worker", rank, world_size, seed, restart, len(sources),
                cfg.num_workers, cfg.crops_per_image, buffer_crops(cfg), cfg.shuffle_buffer_mb)
    return TrainStream(dataset, cfg.num_workers, seed, _fingerprint(cfg, sources, ids))


def build_val_batches(cfg: DataConfig, *, batch_size: int | None = None) -> list[dict]:
    """Centre crops of the first ``data.val_size`` images of ``data.val`` (sorted shard order) as batches
    ``{"hr": (B, 3, S, S) float32 in [0, 1], "key"}`` (a fixed set held in memory: normalised already);
    ``[]`` when ``data.val`` is None. Read in this process, so every rank gets the same fixed set."""
    if cfg.val is None:
        return []
    crops = itertools.islice(_centre_crops(expand_shards(cfg.val, "data.val"), cfg), cfg.val_size)
    batches = [{**b, "hr": to_unit(b["hr"])} for b in _batched(crops, batch_size or cfg.batch_size)]
    found = sum(len(b["key"]) for b in batches)
    if found < cfg.val_size:
        logger.warning("data.val gave %d of data.val_size=%d images", found, cfg.val_size)
    return batches


def build_val_stream(cfg: DataConfig, *, rank: int, world_size: int, batch_size: int | None = None) -> DataLoader:
    """One ordered pass over this rank's share of all of ``data.val`` as uint8 batches like the training
    stream's (no resampling, no duplicates across ranks and workers); ranks may get different numbers of
    batches."""
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
                      generator=torch.Generator(), worker_init_fn=ignore_signals_in_worker)
