"""Anti-entropy: a background reconcile pass that repairs what no event ever showed.

Theory of operation. Registry events do not cover everything (AWS publishes
none for certificates, principal attachments or policies), and a persistent
session keeps queued messages only so long (AWS: an hour by default): a
replicator down longer loses events. So the service runs, beside its feed and
workers, a full reconcile pass (``_reconcile.py``: the same reads and planners
as the event path, the same rules: an object only in the target is kept unless
its sync point shows it was replicated, ``_sync.target_only_guard``) every
``interval_s``. The first pass comes soon after start (``first_pass_delay_s``)
when the journal shows the service was away longer than ``down_after_s``: the
loop writes a heartbeat (``meta`` ``anti_entropy_alive_at``) every
``heartbeat_s``, and a journal without one, or with an old one, means events
may have been lost. Otherwise the next pass is due ``interval_s`` after the
last completed one (``anti_entropy_completed_at``), across restarts.

A pass takes at most ``share`` of each API's quota (the quota limiter's
background share for the pass's threads), so live changes always keep the
rest; it stops when the service stops, and an interrupted pass stays due.
Progress and the last completion are metrics (:meth:`AntiEntropy.collect`) and
``/readyz`` details (:meth:`AntiEntropy.details`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from replicator._errors import AccessDeniedError, ConfigError, CredentialsError, ReplicatorError
from replicator.runtime._reconcile import reconcile

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from replicator.runtime._engine import Engine
    from replicator.runtime._quotas import QuotaLimiter
    from replicator.runtime._reconcile import ReconcileReport

__all__ = ["ALIVE_AT", "COMPLETED_AT", "AntiEntropy", "AntiEntropyConfig"]

logger = logging.getLogger(__name__)

ALIVE_AT: Final = "anti_entropy_alive_at"
COMPLETED_AT: Final = "anti_entropy_completed_at"


@dataclass(frozen=True, slots=True, kw_only=True)
class AntiEntropyConfig:
    """When and how hard the background pass runs.

    Attributes:
        interval_s: between the end of one pass and the start of the next.
        share: the fraction of each API's quota a pass may take (the rest is
            the live changes').
        down_after_s: away longer than this (the broker's session expiry: AWS
            keeps queued messages an hour), the first pass comes soon after start.
        first_pass_delay_s: how soon, then.
        heartbeat_s: how often the journal is told the service is alive.
        workers: objects compared at once in a pass.
    """

    interval_s: float = 6 * 3600.0
    share: float = 0.2
    down_after_s: float = 3600.0
    first_pass_delay_s: float = 30.0
    heartbeat_s: float = 60.0
    workers: int = 2

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ConfigError("anti-entropy: the interval must be positive")
        if not 0 < self.share <= 1:
            raise ConfigError("anti-entropy: the quota share must be in (0, 1]")
        if self.down_after_s <= 0 or self.heartbeat_s <= 0 or self.first_pass_delay_s < 0:
            raise ConfigError("anti-entropy: durations must be positive")
        if self.workers < 1:
            raise ConfigError("anti-entropy: workers must be at least 1")


class AntiEntropy:
    """Runs the background reconcile pass of one engine (see the module docstring).

    Args:
        engine: the engine whose regions and journal the pass uses.
        config: when and how hard.
        limiter: the quota buckets whose background share the pass takes
            (None: the pass is not held to a share, e.g. in-memory regions).
        wall: epoch seconds.
    """

    def __init__(
        self,
        engine: Engine,
        config: AntiEntropyConfig | None = None,
        *,
        limiter: QuotaLimiter | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.config = config or AntiEntropyConfig()
        self._limiter = limiter
        self._wall = wall
        self._lock = threading.Lock()
        self.passes = 0
        self.running_since: float | None = None
        self.last: ReconcileReport | None = None
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"AntiEntropy({self.engine.source.region} -> {self.engine.target.region}, "
            f"passes={self.passes}, running={self.running_since is not None})"
        )

    def _meta(self, name: str) -> float | None:
        value = self.engine.journal.meta(name)
        return float(value) if value is not None else None

    def completed_at(self) -> float | None:
        """When the last pass completed (epoch seconds), across restarts; None: never."""
        return self._meta(COMPLETED_AT)

    def first_due(self, now: float) -> float:
        """When the first pass after a start is due (see the module docstring)."""
        config = self.config
        alive = self._meta(ALIVE_AT)
        if alive is None or now - alive > config.down_after_s:
            return now + config.first_pass_delay_s  # away long enough to have lost events
        completed = self.completed_at()
        return (completed if completed is not None else now) + config.interval_s

    def heartbeat(self, now: float) -> None:
        """Tell the journal the service is alive now."""
        self.engine.journal.set_meta(ALIVE_AT, repr(now), now=now)

    def run_pass(self, stop: threading.Event | None = None) -> ReconcileReport:
        """One full pass, within the quota share; recorded as completed unless stopped.

        Raises:
            AccessDeniedError: a permission is missing.
            ReplicatorError: listing a region failed (the pass stays due).
        """
        stop = stop or threading.Event()
        started = self._wall()
        with self._lock:
            self.running_since = started
        logger.info("replicator.anti_entropy.started", extra={"share": self.config.share})
        limiter, share = self._limiter, self.config.share

        def background() -> None:
            if limiter is not None:
                limiter.share_this_thread(share)

        background()
        try:
            report = reconcile(
                self.engine,
                dry_run=False,
                workers=self.config.workers,
                stop=stop,
                one_way=True,  # what only the secondary changed is the failback queue's
                thread_setup=background,
            )
        finally:
            if limiter is not None:
                limiter.share_this_thread(None)
            with self._lock:
                self.running_since = None
        now = self._wall()
        with self._lock:
            self.last = report
        if not report.interrupted:
            self.engine.journal.set_meta(COMPLETED_AT, repr(now), now=now)
            with self._lock:
                self.passes += 1
        logger.info(
            "replicator.anti_entropy.complete",
            extra={
                "compared": sum(report.compared.values()),
                "differing": len(report.differences),
                "errors": report.errors,
                "interrupted": report.interrupted,
                "duration_s": round(now - started, 3),
            },
        )
        return report

    def run(self, stop: threading.Event) -> None:
        """Heartbeats, and a pass whenever one is due, until ``stop`` is set.

        A pass that fails (a region down) is tried again after ``first_pass_delay_s``
        or a heartbeat, whichever is longer.

        Raises:
            AccessDeniedError: a permission is missing: the service stops and says so.
        """
        config = self.config
        now = self._wall()
        due = self.first_due(now)
        self.heartbeat(now)
        logger.info("replicator.anti_entropy.scheduled", extra={"in_s": round(due - now, 1)})
        while not stop.is_set():
            now = self._wall()
            if now >= due:
                try:
                    self.run_pass(stop)
                except (AccessDeniedError, CredentialsError):
                    raise
                except ReplicatorError as exc:
                    with self._lock:
                        self.last_error = str(exc)
                    logger.warning("replicator.anti_entropy.failed", extra={"error": str(exc)})
                    due = self._wall() + max(config.first_pass_delay_s, config.heartbeat_s)
                else:
                    with self._lock:
                        self.last_error = None
                    due = self._wall() + config.interval_s
                self.heartbeat(self._wall())
                continue
            stop.wait(min(config.heartbeat_s, max(0.0, due - now)))
            self.heartbeat(self._wall())

    def details(self) -> dict[str, Any]:
        """For ``/readyz``: passes, the running one, the last completion and its outcome."""
        with self._lock:
            last, running, error = self.last, self.running_since, self.last_error
        found: dict[str, Any] = {
            "passes": self.passes,
            "running": running is not None,
            "last_completed_at": self.completed_at(),
        }
        if last is not None:
            found["last_differing"] = len(last.differences)
            found["last_errors"] = last.errors
        if error is not None:
            found["last_error"] = error
        return found

    def collect(self) -> Iterator[Metric]:
        """Metrics (a prometheus collector): passes, running, last completion, last outcome."""
        with self._lock:
            last, running = self.last, self.running_since
        yield CounterMetricFamily(
            "iotdr_replicator_anti_entropy_passes",
            "Completed anti-entropy passes since the service started.",
            value=self.passes,
        )
        yield GaugeMetricFamily(
            "iotdr_replicator_anti_entropy_running",
            "1 while a pass runs.",
            value=int(bool(running)),
        )
        completed = self.completed_at()
        yield GaugeMetricFamily(
            "iotdr_replicator_anti_entropy_last_completed_timestamp_seconds",
            "When the last pass completed (epoch seconds; 0: never).",
            value=completed or 0.0,
        )
        if last is not None:
            yield GaugeMetricFamily(
                "iotdr_replicator_anti_entropy_last_compared",
                "Objects compared by the last pass.",
                value=sum(last.compared.values()),
            )
            yield GaugeMetricFamily(
                "iotdr_replicator_anti_entropy_last_differing",
                "Objects the last pass found differing (repaired or reported).",
                value=len(last.differences),
            )
