"""The replicator service: the feed, the engine and the HTTP endpoints until SIGTERM or SIGINT.

The feed's paho thread journals changes; the engine's workers apply them; a
daemon thread serves ``/healthz``, ``/readyz`` and ``/metrics`` (``_http.py``).
A signal sets the stop event: readiness turns 503, the engine finishes the
objects it is applying, the feed disconnects (its persistent session keeps
what arrives meanwhile), the HTTP server stops, and the journal keeps
everything not yet applied for the next start. A feed whose journal failed, or
AccessDenied in the engine, stops the service with the error, so that a
supervisor restarts it or an operator sees the line.

Lifecycle lines (``replicator.started``, ``replicator.stats``,
``replicator.stopped``) go both to ``report`` (the command's stdout with
``--json``) and to the log with their fields as ``extra=`` (JSON lines under
``iotdr --log-json``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from replicator._feed import MqttFeed
from replicator._health import ServiceHealth
from replicator._http import OpsServer
from replicator._metrics import ReplicatorMetrics
from replicator._quotas import QuotaLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator._engine import Engine, Outcome
    from replicator._failback import AutoFailback
    from replicator._feed import FeedConfig

__all__ = ["ServiceOps", "run_service"]

logger = logging.getLogger(__name__)

_WATCH_S = 1.0


class ServiceOps:
    """The service's metrics and health; :meth:`observe` is the engine's observer.

    Build it before the engine (``Engine(..., observer=ops.observe)``) so that
    every outcome reaches the lag histogram, the counters and readiness.

    Args:
        unavailable_after: ``unavailable`` outcomes in a row after which the
            service is not ready (a region is unreachable).
    """

    def __init__(self, *, unavailable_after: int = 3) -> None:
        self.metrics = ReplicatorMetrics()
        self.health = ServiceHealth(unavailable_after=unavailable_after)

    def __repr__(self) -> str:
        return f"ServiceOps({self.health!r})"

    def observe(self, outcome: Outcome) -> None:
        """Count one processed change (from the engine's workers; never raises)."""
        self.metrics.observe(outcome)
        self.health.observe(outcome)


def run_service(
    engine: Engine,
    feed_config: FeedConfig,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
    stats_interval_s: float = 60.0,
    listen: tuple[str, int] | None = None,
    ops: ServiceOps | None = None,
    failback: tuple[AutoFailback, FeedConfig] | None = None,
) -> None:
    """Run the feed, the engine and the endpoints until ``stop`` is set or a signal arrives.

    Args:
        engine: the engine, with its journal (built with ``observer=ops.observe``
            for the outcome metrics).
        feed_config: the source region's broker.
        report: called with one JSON-ready line per lifecycle event.
        stop: set it to stop; by default SIGTERM and SIGINT set it.
        stats_interval_s: how often to report a ``replicator.stats`` line (queue
            depth, lag, counters).
        listen: where to serve ``/healthz``, ``/readyz`` and ``/metrics``; None: nowhere.
        ops: the metrics and health the engine reports to; None: new ones (the
            journal's and the feed's metrics only).
        failback: automatic failback (``_failback.py``) with the secondary's
            broker: a second feed into the failback engine's journal queue.

    Raises:
        ConfigError: the ``listen`` address cannot be bound.
        ReplicatorError: the feed's journal failed, or a permission is missing.
    """
    stop = stop or threading.Event()
    ops = ops or ServiceOps()
    feed = MqttFeed(feed_config, engine.journal)
    server = OpsServer(*listen, health=ops.health, metrics=ops.metrics) if listen else None
    back = _Failback(*failback, stop) if failback is not None else None
    previous = _install_signals(stop)

    ops.health.watch(journal_probe=lambda: engine.journal.counts(engine.now()), feed=feed)
    ops.metrics.watch(
        journal=engine.journal,
        now=engine.now,
        feed=feed,
        limiter=_limiter_of(engine),
        health=ops.health,
        failback_journal=failback[0].failback.journal if failback is not None else None,
    )
    if server is not None:
        server.start()
    feed.start()
    if back is not None:
        back.start()
    _lifecycle(
        report,
        "replicator.started",
        {
            "source": engine.source.region,
            "target": engine.target.region,
            "mode": engine.config.mode,
            "journal": engine.journal.path,
            "listen": server.url if server is not None else None,
            "failback": "auto" if back is not None else "off",
        },
    )

    def watch() -> None:
        next_stats = time.monotonic() + stats_interval_s
        while not stop.wait(_WATCH_S):
            if feed.failed is not None or (back is not None and back.failed is not None):
                stop.set()
            if time.monotonic() >= next_stats:
                next_stats += stats_interval_s
                _lifecycle(report, "replicator.stats", _status(engine, feed))
        ops.health.stopping()  # at once, while the engine finishes what it is applying

    watcher = threading.Thread(target=watch, name="replicator-watch", daemon=True)
    watcher.start()
    ops.health.engine_running()
    try:
        engine.run(stop)
    except BaseException as exc:
        ops.health.engine_stopped(exc)
        raise
    finally:
        stop.set()
        ops.health.stopping()
        ops.health.engine_stopped()
        feed.stop()
        if back is not None:
            back.stop()
        watcher.join()
        if server is not None:
            server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _lifecycle(report, "replicator.stopped", _status(engine, feed))
    if feed.failed is not None:
        raise feed.failed
    if back is not None and back.failed is not None:
        raise back.failed


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT set ``stop`` (from the main thread only); the previous handlers."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


class _Failback:
    """Automatic failback's feed (the secondary's broker) and thread, run with the service."""

    def __init__(self, auto: AutoFailback, feed_config: FeedConfig, stop: threading.Event) -> None:
        self.auto = auto
        self.feed = MqttFeed(feed_config, auto.failback.journal)
        self.thread = threading.Thread(target=self._run, args=(stop,), name="replicator-failback")

    def __repr__(self) -> str:
        return f"_Failback({self.auto!r})"

    def _run(self, stop: threading.Event) -> None:
        try:
            self.auto.run(stop)
        except BaseException:  # noqa: BLE001 - kept on auto.failed, raised by run_service
            stop.set()

    def start(self) -> None:
        self.feed.start()
        self.thread.start()

    def stop(self) -> None:
        self.feed.stop()
        self.thread.join()

    @property
    def failed(self) -> BaseException | None:
        return self.feed.failed or self.auto.failed


def _lifecycle(
    report: Callable[[dict[str, Any]], None], event: str, fields: dict[str, Any]
) -> None:
    """One lifecycle line: to ``report`` and to the log (fields as ``extra=``)."""
    logger.info(event, extra=fields)
    report({"event": event, **fields})


def _limiter_of(engine: Engine) -> QuotaLimiter | None:
    """The quota buckets the engine's target calls through (the boto3 adapter's), if any."""
    found = getattr(engine.target, "limiter", None)
    return found if isinstance(found, QuotaLimiter) else None


def _status(engine: Engine, feed: MqttFeed) -> dict[str, Any]:
    """The engine's counters, the journal's depth and lag, the feed's counters."""
    counts = engine.journal.counts(engine.now())
    counters = feed.counters
    return {
        **engine.stats.as_dict(),
        "pending": counts.pending,
        "due": counts.due,
        "oldest_pending_s": round(counts.oldest_pending_s, 3),
        "dead": counts.dead,
        "dead_letters": counts.dead_letters,
        "feed": {name: getattr(counters, name) for name in counters.__dataclass_fields__},
        "subscribed": feed.subscribed,
    }
