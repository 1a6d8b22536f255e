"""Counting, never-fatal handling of corrupt samples and unreadable shards.

Counts live in a shared-memory array with one row per loader worker, so what the
worker processes skip is visible to the main process (``SkipCounts.totals``).
The handler is an object (no module-global counter, unlike open_clip's
``_wds_error_count``) and follows webdataset's handler protocol: called with the
exception, returns True to go on.
"""
from __future__ import annotations

import logging
import multiprocessing as mp

logger = logging.getLogger(__name__)

SKIP_KINDS: tuple[str, ...] = ("decode", "read")
"""``decode``: a sample whose image is missing or does not decode; ``read``: a shard that
could not be opened or broke off mid-way (a truncated tar loses the rest of that shard)."""


class SkipCounts:
    """Skip counters in shared memory: ``num_slots`` rows (one per worker) x ``SKIP_KINDS``."""

    num_slots: int

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"SkipCounts needs >= 1 slot, got {num_slots}")
        self.num_slots = num_slots
        # Created before the DataLoader starts its workers, so forked or spawned workers share it.
        self._array = mp.get_context().Array("q", num_slots * len(SKIP_KINDS))

    def add(self, slot: int, kind: str) -> None:
        """Count one skip of ``kind`` in worker row ``slot``."""
        index = slot * len(SKIP_KINDS) + SKIP_KINDS.index(kind)
        with self._array.get_lock():
            self._array[index] += 1

    def totals(self) -> dict[str, int]:
        """Skips so far per kind, summed over all worker rows."""
        with self._array.get_lock():
            values = list(self._array)
        width = len(SKIP_KINDS)
        return {kind: int(sum(values[k::width])) for k, kind in enumerate(SKIP_KINDS)}


class SkipHandler:
    """webdataset-style exception handler that counts, logs the first and every N-th skip, and goes on."""

    counts: SkipCounts
    kind: str
    slot: int
    log_every: int
    seen: int

    def __init__(self, counts: SkipCounts, kind: str, slot: int = 0, log_every: int = 100) -> None:
        if kind not in SKIP_KINDS:
            raise ValueError(f"unknown skip kind {kind!r}; expected one of {SKIP_KINDS}")
        self.counts, self.kind, self.slot, self.log_every = counts, kind, slot, max(1, log_every)
        self.seen = 0

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        """Count ``exn`` (raised while handling ``where``); log the 1st and every N-th; return True (continue)."""
        self.counts.add(self.slot, self.kind)
        self.seen += 1
        if self.seen == 1 or self.seen % self.log_every == 0:
            logger.warning("skipped %s #%d (worker slot %d, logging every %d): %s: %s %s",
                           self.kind, self.seen, self.slot, self.log_every, type(exn).__name__, exn, where)
        return True
