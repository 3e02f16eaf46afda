"""The service host: feeds, journal workers and the HTTP endpoints until SIGTERM or SIGINT.

One host for ``iotdr replicator run`` (the engine, and with ``--failback
auto`` its failback queue) and ``iotdr replicator jitr`` (the JITR handler).
Each feed's paho thread journals changes; the main worker runs in the calling
thread, any others in threads of their own; a daemon thread serves
``/healthz``, ``/readyz`` and ``/metrics`` (``_http.py``). A signal sets the
stop event: readiness turns 503, the workers finish what they are applying,
the feeds disconnect (their persistent sessions keep what arrives meanwhile),
the HTTP server stops, and the journal keeps everything not yet applied for
the next start. A feed whose journal failed, or AccessDenied in a worker,
stops the service with the error, so that a supervisor restarts it or an
operator sees the line.

Lifecycle lines (``<name>.started``, ``<name>.stats``, ``<name>.stopped``, the
name being ``replicator`` or ``jitr``) go both to ``report`` (the command's
stdout with ``--json``) and to the log with their fields as ``extra=``
(JSON lines under ``iotdr --log-json``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator.runtime._feed import MqttFeed
from replicator.runtime._health import ServiceHealth
from replicator.runtime._http import OpsServer
from replicator.runtime._metrics import ReplicatorMetrics
from replicator.runtime._quotas import QuotaLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.runtime._anti_entropy import AntiEntropy
    from replicator.runtime._engine import Engine
    from replicator.runtime._failback import AutoFailback
    from replicator.runtime._feed import FeedConfig
    from replicator.runtime._jitr import JitrHandler
    from replicator.runtime._journal import Journal
    from replicator.runtime._worker import Outcome

__all__ = ["Hosted", "ServiceHost", "ServiceOps", "run_jitr_service", "run_service"]

logger = logging.getLogger(__name__)

_WATCH_S = 1.0


class ServiceOps:
    """The service's metrics and health; :meth:`observe` is the workers' observer.

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
        """Count one processed change (from the workers' threads; never raises)."""
        self.metrics.observe(outcome)
        self.health.observe(outcome)


@dataclass(slots=True)
class Hosted:
    """A loop the host runs with its feed: ``run(stop)`` until ``stop`` is set.

    Attributes:
        name: its thread's name.
        run: the loop; it raises what stops the service.
        feed: the feed that journals its changes, if any.
        failed: what stopped it (set by the host).
    """

    name: str
    run: Callable[[threading.Event], None]
    feed: MqttFeed | None = None
    failed: BaseException | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, stop: threading.Event) -> None:
        """Start the feed, and the loop in a thread of its own."""
        if self.feed is not None:
            self.feed.start()
        self._thread = threading.Thread(target=self._guarded, args=(stop,), name=self.name)
        self._thread.start()

    def _guarded(self, stop: threading.Event) -> None:
        try:
            self.run(stop)
        except BaseException as exc:  # noqa: BLE001 - kept on .failed, raised by the host
            self.failed = exc
            stop.set()

    def stop(self) -> None:
        """Stop the feed and wait for the loop (``stop`` is set)."""
        if self.feed is not None:
            self.feed.stop()
        if self._thread is not None:
            self._thread.join()

    @property
    def error(self) -> BaseException | None:
        """The feed's failure, or the loop's."""
        feed_failed = self.feed.failed if self.feed is not None else None
        return feed_failed or self.failed


@dataclass(slots=True, kw_only=True)
class ServiceHost:
    """Runs a main loop and others with their feeds, the endpoints and the lifecycle lines.

    Attributes:
        name: the lifecycle lines' prefix (``replicator``, ``jitr``).
        main: the main loop, run in the calling thread.
        worked: the engine or JITR handler of the main loop: its journal (readiness,
            metrics) and counters (the ``<name>.stats`` and ``<name>.stopped`` lines).
        report: called with one JSON-ready line per lifecycle event.
        started: the ``<name>.started`` line's fields.
        others: loops run beside it (automatic failback).
        stop: set it to stop; by default SIGTERM and SIGINT set it.
        stats_interval_s: how often to report ``<name>.stats``.
        listen: where to serve ``/healthz``, ``/readyz`` and ``/metrics``; None: nowhere.
        ops: the metrics and health the workers report to.
        limiter: the quota buckets (their throttles are metrics).
        failback_journal: automatic failback's journal queue (its metrics).
    """

    name: str
    main: Hosted
    worked: Engine | JitrHandler
    report: Callable[[dict[str, Any]], None]
    started: dict[str, Any]
    others: list[Hosted] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    stats_interval_s: float = 60.0
    listen: tuple[str, int] | None = None
    ops: ServiceOps = field(default_factory=ServiceOps)
    limiter: QuotaLimiter | None = None
    failback_journal: Journal | None = None

    def __repr__(self) -> str:
        return f"ServiceHost({self.name!r}, stopping={self.stop.is_set()}, {self.ops!r})"

    def run(self) -> None:
        """Run everything until ``stop`` is set or a signal arrives.

        Raises:
            ConfigError: the ``listen`` address cannot be bound.
            ReplicatorError: a feed's journal failed, or a permission is missing.
        """
        stop, ops, main, worked = self.stop, self.ops, self.main, self.worked
        server = None
        if self.listen:
            server = OpsServer(*self.listen, health=ops.health, metrics=ops.metrics)
        previous = _install_signals(stop)
        ops.health.watch(journal_probe=lambda: worked.journal.counts(worked.now()), feed=main.feed)
        ops.metrics.watch(
            journal=worked.journal,
            now=worked.now,
            feed=main.feed,
            limiter=self.limiter,
            health=ops.health,
            failback_journal=self.failback_journal,
        )
        if server is not None:
            server.start()
        if main.feed is not None:
            main.feed.start()
        for other in self.others:
            other.start(stop)
        listen = {"listen": server.url if server is not None else None}
        self._lifecycle("started", {**self.started, **listen})
        watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        watcher.start()
        ops.health.engine_running()
        try:
            main.run(stop)
        except BaseException as exc:
            ops.health.engine_stopped(exc)
            raise
        finally:
            stop.set()
            ops.health.stopping()
            ops.health.engine_stopped()
            if main.feed is not None:
                main.feed.stop()
            for other in self.others:
                other.stop()
            watcher.join()
            if server is not None:
                server.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._lifecycle("stopped", self._status())
        for hosted in (main, *self.others):
            if hosted.error is not None:
                raise hosted.error

    def _watch(self) -> None:
        """Stop when a feed or another loop failed, restart a feed's dead thread, report stats."""
        next_stats = time.monotonic() + self.stats_interval_s
        while not self.stop.wait(_WATCH_S):
            for hosted in (self.main, *self.others):
                if hosted.feed is not None:
                    hosted.feed.keep_running()
            if any(hosted.error is not None for hosted in (self.main, *self.others)):
                self.stop.set()
            if time.monotonic() >= next_stats:
                next_stats += self.stats_interval_s
                self._lifecycle("stats", self._status())
        self.ops.health.stopping()  # at once, while the workers finish what they apply

    def _status(self) -> dict[str, Any]:
        """The worker's counters, its queue's depth and lag, the feed's counters."""
        worked, feed = self.worked, self.main.feed
        counts = worked.journal.counts(worked.now())
        found = {**worked.stats.as_dict(), "pending": counts.pending, "due": counts.due}
        found["oldest_pending_s"] = round(counts.oldest_pending_s, 3)
        if self.name == "jitr":  # its own "dead": certificates given up on since it started
            found["queued_dead"] = counts.dead
        else:
            found |= {"dead": counts.dead, "dead_letters": counts.dead_letters}
        if feed is not None:
            counters = feed.counters
            found["feed"] = {n: getattr(counters, n) for n in counters.__dataclass_fields__}
            found["subscribed"] = feed.subscribed
        return found

    def _lifecycle(self, event: str, fields: dict[str, Any]) -> None:
        """One lifecycle line: to ``report`` and to the log (fields as ``extra=``)."""
        name = f"{self.name}.{event}"
        logger.info(name, extra=fields)
        self.report({"event": name, **fields})


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT set ``stop`` (from the main thread only); the previous handlers."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def run_service(
    engine: Engine,
    feed_config: FeedConfig,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
    listen: tuple[str, int] | None = None,
    ops: ServiceOps | None = None,
    failback: tuple[AutoFailback, FeedConfig] | None = None,
    anti_entropy: AntiEntropy | None = None,
) -> None:
    """``iotdr replicator run``: the feed, the engine and the endpoints (see :class:`ServiceHost`).

    Args:
        engine: the engine, with its journal.
        feed_config: the source region's broker.
        report: called with one JSON-ready line per lifecycle event.
        stop: set it to stop; by default SIGTERM and SIGINT set it.
        listen: where to serve ``/healthz``, ``/readyz`` and ``/metrics``; None: nowhere.
        ops: the metrics and health the engine's outcomes (both queues') go to; None: new ones.
        failback: automatic failback (``_failback.py``) with the secondary's
            broker: a second feed into the engine's failback queue.
        anti_entropy: the background reconcile pass (``_anti_entropy.py``), run
            in a thread of its own; its progress in ``/metrics`` and ``/readyz``.

    Raises:
        ConfigError: the ``listen`` address cannot be bound.
        ReplicatorError: the feed's journal failed, or a permission is missing.
    """
    ops = ops or ServiceOps()
    engine.add_observer(ops.observe)
    feed = MqttFeed(feed_config, engine.journal)
    others = []
    if failback is not None:
        auto, back_feed = failback
        auto.failback.add_observer(ops.observe)
        others.append(
            Hosted("replicator-failback", auto.run, MqttFeed(back_feed, auto.failback.journal))
        )
    if anti_entropy is not None:
        others.append(Hosted("replicator-anti-entropy", anti_entropy.run))
        ops.metrics.registry.register(anti_entropy)
        ops.health.add_details("anti_entropy", anti_entropy.details)
    ServiceHost(
        name="replicator",
        main=Hosted("replicator", engine.run, feed),
        worked=engine,
        report=report,
        started={
            "source": engine.source.region,
            "target": engine.target.region,
            "mode": engine.config.mode,
            "journal": engine.journal.path,
            "failback": "auto" if failback is not None else "off",
            "anti_entropy_interval_s": (
                anti_entropy.config.interval_s if anti_entropy is not None else None
            ),
        },
        others=others,
        stop=stop or threading.Event(),
        listen=listen,
        ops=ops,
        limiter=_limiter_of(engine.target),
        failback_journal=failback[0].failback.journal if failback is not None else None,
    ).run()


def run_jitr_service(
    handler: JitrHandler,
    feed: MqttFeed | None,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
    listen: tuple[str, int] | None = None,
) -> None:
    """``iotdr replicator jitr``: the feed (when given), the handler and the endpoints.

    Raises:
        ConfigError: the ``listen`` address cannot be bound.
        ReplicatorError: the feed's journal failed, or a permission is missing.
    """
    ops = ServiceOps()
    handler.add_observer(ops.observe)
    ServiceHost(
        name="jitr",
        main=Hosted("jitr", handler.run, feed),
        worked=handler,
        report=report,
        started={
            "region": handler.region.region,
            "policy": handler.config.policy_name,
            "feed": f"{feed.config.host}:{feed.config.port}" if feed is not None else None,
            "journal": handler.journal.path,
        },
        stop=stop or threading.Event(),
        listen=listen,
        ops=ops,
        limiter=_limiter_of(handler.region),
    ).run()


def _limiter_of(region: object) -> QuotaLimiter | None:
    """The quota buckets a region's calls go through (the boto3 adapter's), if any."""
    found = getattr(region, "limiter", None)
    return found if isinstance(found, QuotaLimiter) else None
