"""Never-fatal handling of bad samples: each distinct one recorded once as ``(shard, key, kind, reason)``.

A loader worker reports what it skips to a ``SkipReporter``, which keeps each distinct sample once (a
resampled stream meets the same bad sample every pass), logs the first and every N-th, and hands the new
records to the main process with the next batch. There a ``SkipLog`` merges the workers' (and, in training,
the ranks') records, again by ``(shard, key)``, so counts are of distinct samples; the training loop
appends each new one to ``skipped.jsonl`` in the run folder. No module-global counter (unlike open_clip's
``_wds_error_count``).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

SKIP_KINDS: tuple[str, ...] = ("decode", "read", "small")
"""``decode``: a sample whose image is missing or does not decode; ``read``: a shard that could not be opened
or broke off mid-way (a truncated tar loses the rest of that shard); ``small``: an image smaller than the crop
(``data.small_images: skip``)."""


def skip_record(kind: str, shard: str, key: str, reason: BaseException | str) -> dict[str, str]:
    """The json record of one skipped sample (``reason``: the exception, or a text)."""
    if kind not in SKIP_KINDS:
        raise ValueError(f"unknown skip kind {kind!r}; expected one of {SKIP_KINDS}")
    text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    return {"shard": shard, "key": key, "kind": kind, "reason": text}


class SkipReporter:
    """Worker side: remembers each distinct skipped sample, logs the 1st and every N-th, queues new records."""

    log_every: int
    where: str
    seen: set[tuple[str, str]]
    pending: list[dict[str, str]]

    def __init__(self, log_every: int = 100, where: str = "") -> None:
        self.log_every, self.where = max(1, log_every), where
        self.seen, self.pending = set(), []

    def __call__(self, kind: str, shard: str, key: str, reason: BaseException | str) -> None:
        """Record a skip of sample ``key`` of ``shard`` (``key`` '' for a shard that did not open)."""
        if (shard, key) in self.seen:
            return
        record = skip_record(kind, shard, key, reason)
        self.seen.add((shard, key))
        self.pending.append(record)
        if len(self.seen) == 1 or len(self.seen) % self.log_every == 0:
            logger.warning("skipped %s sample #%d%s (logging every %d; all are in the run's skipped.jsonl): "
                           "%s %s: %s", kind, len(self.seen), self.where, self.log_every, shard, key,
                           record["reason"])

    def take(self) -> list[dict[str, str]]:
        """The records added since the last call."""
        out, self.pending = self.pending, []
        return out


class SkipLog:
    """Main side: the distinct skipped samples of a stream (or a run), with per-kind counts."""

    records: dict[tuple[str, str], dict[str, str]]

    def __init__(self) -> None:
        self.records = {}
        self._unsent: list[dict[str, str]] = []

    def add(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        """Merge ``records``; returns the ones not seen before (also queued for :meth:`take`)."""
        new = []
        for rec in records:
            ident = (rec["shard"], rec["key"])
            if ident not in self.records:
                self.records[ident] = rec
                new.append(rec)
        self._unsent.extend(new)
        return new

    def take(self) -> list[dict[str, str]]:
        """New records since the last call (what a rank sends to rank 0)."""
        out, self._unsent = self._unsent, []
        return out

    def counts(self) -> dict[str, int]:
        """Distinct skipped samples per kind (every kind present, zeros included)."""
        found = Counter(rec["kind"] for rec in self.records.values())
        return {kind: found.get(kind, 0) for kind in SKIP_KINDS}

    def load(self, path: Path) -> None:
        """Take in the records of an earlier life of the run (``skipped.jsonl``), so counts carry on."""
        if Path(path).is_file():
            lines = Path(path).read_text().splitlines()
            self.add([json.loads(line) for line in lines if line.strip()])
            self._unsent.clear()

    @staticmethod
    def append(path: Path, records: list[dict[str, str]]) -> None:
        """Append records to a ``skipped.jsonl`` file, one json object per line."""
        if records:
            with Path(path).open("a") as f:
                f.writelines(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
