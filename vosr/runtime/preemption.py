"""Preemption signals → a flag the training loop polls between steps.

Slurm sends ``USR1`` (``--signal=USR1@120``) before the time limit, submitit ``USR2``, and a
plain ``scancel`` ``TERM``. The handler only records the request: saving happens at the next
step boundary, collectively on every rank, and the process then exits with ``EXIT_PREEMPTED``
so the launcher (sbatch script or submitit) knows to requeue.
"""
from __future__ import annotations

import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" — the launcher requeues on this code
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class PreemptionFlag:
    """Records that a preemption signal arrived; ``requested`` is polled by the loop."""

    requested: bool
    signal_name: str | None

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = None
        self._previous: dict[int, object] = {}

    def install(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> PreemptionFlag:
        """Install handlers (main thread only); returns ``self``."""
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def request(self, reason: str = "manual") -> None:
        """Ask for a checkpoint-and-exit at the next step boundary."""
        self.requested = True
        self.signal_name = reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            logger.warning("received %s: will checkpoint at the next step boundary and exit for requeue", name)
        self.request(name)
