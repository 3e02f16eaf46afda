"""The replicator service: the feed and the engine in one process until SIGTERM or SIGINT.

The feed's paho thread journals changes; the engine's workers apply them. A
signal sets the stop event: the engine finishes the objects it is applying,
the feed disconnects (its persistent session keeps what arrives meanwhile),
and the journal keeps everything not yet applied for the next start. A feed
whose journal failed, or AccessDenied in the engine, stops the service with
the error, so that a supervisor restarts it or an operator sees the line.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from replicator._feed import MqttFeed

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator._engine import Engine
    from replicator._feed import FeedConfig

__all__ = ["run_service"]

logger = logging.getLogger(__name__)

_WATCH_S = 1.0


def run_service(
    engine: Engine,
    feed_config: FeedConfig,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
    stats_interval_s: float = 60.0,
) -> None:
    """Run the feed and the engine until ``stop`` is set or a signal arrives.

    Args:
        engine: the engine, with its journal.
        feed_config: the source region's broker.
        report: called with one JSON-ready line per lifecycle event.
        stop: set it to stop; by default SIGTERM and SIGINT set it.
        stats_interval_s: how often to report a ``replicator.stats`` line (queue
            depth, lag, counters).

    Raises:
        ReplicatorError: the feed's journal failed, or a permission is missing.
    """
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    feed = MqttFeed(feed_config, engine.journal)
    feed.start()
    report(
        {
            "event": "replicator.started",
            "source": engine.source.region,
            "target": engine.target.region,
            "mode": engine.config.mode,
            "journal": engine.journal.path,
        }
    )

    def watch() -> None:
        next_stats = time.monotonic() + stats_interval_s
        while not stop.wait(_WATCH_S):
            if feed.failed is not None:
                stop.set()
            if time.monotonic() >= next_stats:
                next_stats += stats_interval_s
                report({"event": "replicator.stats", **_status(engine, feed)})

    watcher = threading.Thread(target=watch, name="replicator-watch", daemon=True)
    watcher.start()
    try:
        engine.run(stop)
    finally:
        stop.set()
        feed.stop()
        watcher.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        report({"event": "replicator.stopped", **_status(engine, feed)})
    if feed.failed is not None:
        raise feed.failed


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
