"""The engine's and the JITR handler's counters since they started (``replicator.stats`` lines).

What the journal worker settles (retried, dead, the results by kind) is
counted from its :class:`~replicator.runtime._worker.Outcome` s; what only the
applying code sees (writes, conflicts, activations) is counted there.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replicator.runtime._worker import Outcome

__all__ = ["EngineStats", "JitrStats"]


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started (a snapshot with :meth:`as_dict`)."""

    applied: int = 0
    in_sync: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    scheduled: int = 0
    retried: int = 0
    dead: int = 0
    lag_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe(self, outcome: Outcome) -> None:
        """Count one processed change by kind and result (a worker's observer)."""
        with self._lock:
            counts = self.by_kind.setdefault(outcome.key.kind, {})
            counts[outcome.result] = counts.get(outcome.result, 0) + 1
            self.retried += outcome.waiting
            self.dead += outcome.result == "dead"

    def as_dict(self) -> dict[str, Any]:
        """The counters, JSON-ready, with lag percentiles."""
        lags = sorted(self.lag_s)

        def pct(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 3) if lags else None

        return {
            "applied": self.applied,
            "in_sync": self.in_sync,
            "writes": dict(sorted(self.writes.items())),
            "conflicts": self.conflicts,
            "scheduled": self.scheduled,
            "retried": self.retried,
            "dead": self.dead,
            "lag_p50_s": pct(0.5),
            "lag_p99_s": pct(0.99),
            "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(self.by_kind.items())},
        }


@dataclass(slots=True)
class JitrStats:
    """Counters since the handler started."""

    activated: int = 0
    left_alone: int = 0
    refused: int = 0
    mirrored: int = 0
    primary_unchecked: int = 0
    changed_meanwhile: int = 0
    gone: int = 0
    retried: int = 0
    dead: int = 0
    sweeps: int = 0
    sweep_failures: int = 0
    swept: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, result: str, n: int = 1) -> None:
        """Count ``n`` events (``activated``, ``sweeps``...)."""
        with self._lock:
            setattr(self, result, getattr(self, result) + n)

    def wrote(self, api: str) -> None:
        """Count one write call."""
        with self._lock:
            self.writes[api] = self.writes.get(api, 0) + 1

    def observe(self, outcome: Outcome) -> None:
        """Count a certificate the worker left queued or gave up on (a worker's observer)."""
        if outcome.waiting:
            self.count("retried")
        elif outcome.result == "dead":
            self.count("dead")

    def as_dict(self) -> dict[str, Any]:
        """The counters, JSON-ready."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name[0] != "_"}
        return {**values, "writes": dict(sorted(self.writes.items()))}
