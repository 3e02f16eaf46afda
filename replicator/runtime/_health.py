"""Liveness and readiness of the replicator service.

Theory of operation. :class:`ServiceHealth` gathers what the service knows
into a :class:`HealthSnapshot`: whether the engine loop runs, whether the
journal answers, the feed's state, and how many processed changes in a row
ended ``unavailable`` (a region that does not answer). Two pure functions
judge a snapshot:

- :func:`liveness` (``/healthz``): the engine loop is alive and the journal
  opens. A supervisor restarts a process that fails it.
- :func:`readiness` (``/readyz``): alive, not shutting down, the feed connected
  with its subscriptions granted, and no region known to be unreachable. A
  load balancer or an alert looks at it; the process itself is fine.

A region counts as unreachable after ``unavailable_after`` outcomes in a row
were ``unavailable``; any other outcome (the region answered, even with a
throttle or a refusal) clears it. The outcome does not say which region failed:
a read of the source fails the same way, and either way nothing is replicated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from replicator._errors import ConfigError, ReplicatorError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from replicator.runtime._feed import FeedCounters
    from replicator.runtime._worker import Outcome

__all__ = ["FeedView", "HealthSnapshot", "ServiceHealth", "Verdict", "liveness", "readiness"]

EngineState = Literal["starting", "running", "stopped"]


class FeedView(Protocol):
    """What health and metrics read of a change feed (``runtime._feed.MqttFeed``)."""

    @property
    def counters(self) -> FeedCounters:
        """Messages seen."""

    @property
    def subscribed(self) -> bool:
        """Connected, with the subscriptions granted."""

    @property
    def failed(self) -> ReplicatorError | None:
        """The error that stopped the feed, if any."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A check's answer: ``ok``, and a one-line reason (``ok`` when it is)."""

    ok: bool
    reason: str = "ok"
    details: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``details`` only when there are any: the anti-entropy pass's...)."""
        found: dict[str, Any] = {"ok": self.ok, "reason": self.reason}
        if self.details:
            found["details"] = dict(self.details)
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSnapshot:
    """What the service knows at one moment.

    Attributes:
        engine: ``starting``, ``running`` or ``stopped``.
        engine_error: why the engine stopped, when it stopped on an error.
        stopping: shutdown has begun.
        journal_error: why the journal did not answer, or None.
        feed_subscribed: the feed is connected and subscribed; None when there is no feed.
        feed_error: the error that stopped the feed, or None.
        unavailable_streak: processed changes in a row that ended ``unavailable``.
        unavailable_after: the streak from which a region counts as unreachable.
    """

    engine: EngineState
    engine_error: str | None = None
    stopping: bool = False
    journal_error: str | None = None
    feed_subscribed: bool | None = None
    feed_error: str | None = None
    unavailable_streak: int = 0
    unavailable_after: int = 3


def liveness(snapshot: HealthSnapshot) -> Verdict:
    """``/healthz``: the engine loop is alive and the journal opens."""
    if snapshot.engine == "stopped":
        reason = "the engine loop has stopped"
        if snapshot.engine_error:
            reason += f": {snapshot.engine_error}"
        return Verdict(ok=False, reason=reason)
    if snapshot.journal_error is not None:
        return Verdict(ok=False, reason=f"the journal does not answer: {snapshot.journal_error}")
    return Verdict(ok=True)


def readiness(snapshot: HealthSnapshot) -> Verdict:
    """``/readyz``: alive, the feed subscribed, no region known to be unreachable."""
    alive = liveness(snapshot)
    if not alive.ok:
        return alive
    if snapshot.stopping:
        return Verdict(ok=False, reason="shutting down")
    if snapshot.feed_error is not None:
        return Verdict(ok=False, reason=f"the feed failed: {snapshot.feed_error}")
    if snapshot.feed_subscribed is False:
        return Verdict(ok=False, reason="the feed is not connected and subscribed")
    if snapshot.engine == "starting":
        return Verdict(ok=False, reason="the engine loop is starting")
    if snapshot.unavailable_streak >= snapshot.unavailable_after:
        return Verdict(
            ok=False,
            reason=f"a region is unreachable: the last {snapshot.unavailable_streak} changes "
            "ended 'unavailable'",
        )
    return Verdict(ok=True)


class ServiceHealth:
    """The service's health as it goes; thread-safe (the engine's workers report outcomes).

    Args:
        unavailable_after: ``unavailable`` outcomes in a row from which a region
            counts as unreachable.
    """

    def __init__(self, *, unavailable_after: int = 3) -> None:
        if unavailable_after < 1:
            raise ConfigError("unavailable_after must be at least 1")
        self._journal_probe: Callable[[], object] | None = None
        self._feed: FeedView | None = None
        self._details: dict[str, Callable[[], Any]] = {}
        self._unavailable_after = unavailable_after
        self._lock = threading.Lock()
        self._engine: EngineState = "starting"
        self._engine_error: str | None = None
        self._stopping = False
        self._streak = 0

    def __repr__(self) -> str:
        snapshot = self.snapshot()
        return (
            f"ServiceHealth(engine={snapshot.engine}, live={liveness(snapshot).ok}, "
            f"ready={readiness(snapshot).ok})"
        )

    def watch(self, *, journal_probe: Callable[[], object], feed: FeedView | None = None) -> None:
        """Judge by these from now on.

        Args:
            journal_probe: raises :class:`~replicator._errors.ReplicatorError` when
                the journal does not answer (``lambda: journal.counts(now())``).
            feed: the change feed; None when there is none (readiness then ignores it).
        """
        with self._lock:
            self._journal_probe = journal_probe
            self._feed = feed

    def engine_running(self) -> None:
        """The engine loop has started."""
        with self._lock:
            self._engine = "running"

    def engine_stopped(self, error: BaseException | None = None) -> None:
        """The engine loop has ended (with ``error`` when it ended on one)."""
        with self._lock:
            self._engine = "stopped"
            if error is not None:
                self._engine_error = f"{type(error).__name__}: {error}"

    def stopping(self) -> None:
        """Shutdown has begun: no longer ready."""
        with self._lock:
            self._stopping = True

    def observe(self, outcome: Outcome) -> None:
        """Count one processed change (an engine observer: quick, never raises)."""
        with self._lock:
            self._streak = self._streak + 1 if outcome.result == "unavailable" else 0

    def snapshot(self) -> HealthSnapshot:
        """Ask the journal and the feed, and take the rest from what was reported."""
        with self._lock:
            probe = self._journal_probe
        journal_error: str | None = None
        try:
            if probe is not None:
                probe()
        except ReplicatorError as exc:
            journal_error = str(exc)
        with self._lock:
            feed = self._feed
            failed = feed.failed if feed is not None else None
            return HealthSnapshot(
                engine=self._engine,
                engine_error=self._engine_error,
                stopping=self._stopping,
                journal_error=journal_error,
                feed_subscribed=feed.subscribed if feed is not None else None,
                feed_error=str(failed) if failed is not None else None,
                unavailable_streak=self._streak,
                unavailable_after=self._unavailable_after,
            )

    def liveness(self) -> Verdict:
        """``/healthz`` now."""
        return liveness(self.snapshot())

    def readiness(self) -> Verdict:
        """``/readyz`` now, with the details of what was added (:meth:`add_details`)."""
        verdict = readiness(self.snapshot())
        with self._lock:
            sources = dict(self._details)
        if not sources:
            return verdict
        details: dict[str, Any] = {}
        for name, source in sources.items():
            try:
                details[name] = source()
            except ReplicatorError as exc:  # a detail must not fail the probe
                details[name] = {"error": str(exc)}
        return replace(verdict, details=details)

    def add_details(self, name: str, source: Callable[[], Any]) -> None:
        """Show ``source()`` under ``name`` in ``/readyz``'s JSON details."""
        with self._lock:
            self._details[name] = source
