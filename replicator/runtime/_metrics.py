"""The replicator's Prometheus metrics, in a registry of its own.

Two sources. The engine's observer hook feeds :meth:`ReplicatorMetrics.observe`
one :class:`~replicator.runtime._engine.Outcome` per processed change: the lag
histogram and the outcome and write counters. Everything else is read when
Prometheus scrapes (:meth:`ReplicatorMetrics.watch` says from where): the
journal's queue depth, the feed's counters, the quota buckets' throttles, the
service's readiness. Reading at scrape time keeps the numbers true after a
restart (the journal is durable) and costs nothing between scrapes.

Applied, failed and throttled changes are ``iotdr_replicator_changes_total``
by ``result``: applied is ``done`` and ``scheduled``; ``deferred`` is a
follow-up claimed while the writes that made it still run (tried again after
them); failed is ``retry``, ``unavailable``, ``denied`` and ``dead``;
``throttled`` is its own result. Every (kind, result) series exists from the
start at 0, so that ``rate()`` sees the first increment. With ``--failback
auto`` the failback queue's outcomes and the queue have the same metrics
under ``iotdr_replicator_failback_``
(``iotdr_replicator_failback_changes_total``, ``..._lag_seconds``,
``..._writes_total``, ``..._queue_pending``...).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from replicator._errors import ReplicatorError
from replicator.core._state import KINDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from replicator.runtime._health import FeedView, ServiceHealth
    from replicator.runtime._journal import Journal
    from replicator.runtime._quotas import QuotaLimiter
    from replicator.runtime._worker import Outcome

__all__ = ["CONTENT_TYPE", "LAG_BUCKETS_S", "RESULTS", "ReplicatorMetrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
"""The exposition's content type: Prometheus text format 0.0.4."""

LAG_BUCKETS_S: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""From a shadow update applied within a round trip to a backlog an hour old."""

RESULTS: Final = (
    "done", "scheduled", "deferred", "retry", "throttled", "unavailable", "denied", "dead",
)  # fmt: skip
"""The engine's outcomes of one change (:class:`~replicator.runtime._worker.Outcome`)."""

JITR_RESULTS: Final = (
    "activated", "left_alone", "refused", "mirrored", "gone",
    "retry", "throttled", "unavailable", "denied", "dead",
)  # fmt: skip
"""The JITR handler's outcomes of one certificate (``iotdr_jitr_changes_total``)."""

_FEED_OUTCOMES: Final = (
    ("received", "received"),
    ("accepted", "accepted"),
    ("ignored", "ignored"),
    ("dead_letters", "dead_letter"),
    ("journal_errors", "journal_error"),
)  # (FeedCounters field, label value)


class ReplicatorMetrics:
    """The replicator's metrics: observed outcomes, and what is read at scrape time.

    Attributes:
        registry: the registry to expose (never the global one: two services,
            or a service and its tests, in one process must not share counters).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._observed = {
            "forward": _Observed("iotdr_replicator", "", self.registry),
            "failback": _Observed("iotdr_replicator_failback", "failback: ", self.registry),
        }
        self._jitr: _Observed | None = None
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        self._now: Callable[[], float] = lambda: 0.0
        self._feed: FeedView | None = None
        self._limiter: QuotaLimiter | None = None
        self._health: ServiceHealth | None = None
        self._failback_journal: Journal | None = None
        self.registry.register(self)

    def __repr__(self) -> str:
        return f"ReplicatorMetrics(watching={self._journal is not None})"

    def observe(self, outcome: Outcome) -> None:
        """Count one processed change: the engines' observer (quick, never raises)."""
        if outcome.direction == "jitr":
            with self._lock:
                if self._jitr is None:  # only a JITR service has these series
                    self._jitr = _Observed(
                        "iotdr_jitr", "jitr: ", self.registry, ("certificate",), JITR_RESULTS
                    )
            self._jitr.observe(outcome)
            return
        self._observed.get(outcome.direction, self._observed["forward"]).observe(outcome)

    def watch(
        self,
        *,
        journal: Journal,
        now: Callable[[], float],
        feed: FeedView | None = None,
        limiter: QuotaLimiter | None = None,
        health: ServiceHealth | None = None,
        failback_journal: Journal | None = None,
    ) -> None:
        """Read these at scrape time from now on (the service calls it once it has them)."""
        with self._lock:
            self._journal, self._now, self._feed = journal, now, feed
            self._limiter, self._health = limiter, health
            self._failback_journal = failback_journal

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """What is read when Prometheus scrapes: journal, feed, quota buckets, health."""
        with self._lock:
            journal, now, feed = self._journal, self._now, self._feed
            limiter, health = self._limiter, self._health
            failback_journal = self._failback_journal
        if journal is not None:
            yield from _journal_metrics(journal, now())
            if failback_journal is not None:
                yield from _journal_metrics(failback_journal, now(), "iotdr_replicator_failback")
        if feed is not None:
            yield from _feed_metrics(feed)
        if limiter is not None:
            throttles = CounterMetricFamily(
                "iotdr_replicator_throttles",
                "ThrottlingException answers seen by the quota buckets, by region and API.",
                labels=["region", "api"],
            )
            for name, count in sorted(limiter.throttles().items()):
                region, _, api = name.partition("/")
                throttles.add_metric([region, api], count)
            yield throttles
        if health is not None:
            ready = health.readiness()
            yield GaugeMetricFamily(
                "iotdr_replicator_ready", "1 when /readyz answers 200.", value=int(ready.ok)
            )


class _Observed:
    """One direction's observed metrics: lag, outcomes, writes.

    The failback engine of ``--failback auto`` has its own, ``iotdr_replicator_failback_*``;
    the JITR handler's are ``iotdr_jitr_*``.
    """

    def __init__(
        self,
        prefix: str,
        label: str,
        registry: CollectorRegistry,
        kinds: tuple[str, ...] = KINDS,
        results: tuple[str, ...] = RESULTS,
    ) -> None:
        self._lag = Histogram(
            f"{prefix}_lag_seconds",
            f"{label}From a change's acceptance into the journal to its application in the target.",
            ["kind"],
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self._changes = Counter(
            f"{prefix}_changes",
            f"{label}Processed changes by object kind and result (done and scheduled are applied).",
            ["kind", "result"],
            registry=registry,
        )
        self._writes = Counter(
            f"{prefix}_writes",
            f"{label}Write calls made in the target region, by API.",
            ["api"],
            registry=registry,
        )
        for kind in kinds:
            self._lag.labels(kind)
            for result in results:
                self._changes.labels(kind, result)

    def observe(self, outcome: Outcome) -> None:
        kind = outcome.key.kind
        self._changes.labels(kind, outcome.result).inc()
        if outcome.lag_s is not None:
            self._lag.labels(kind).observe(outcome.lag_s)
        for api in outcome.writes:
            self._writes.labels(api).inc()


def _journal_metrics(
    journal: Journal, now: float, prefix: str = "iotdr_replicator"
) -> Iterator[Metric]:
    try:
        counts = journal.counts(now)
    except ReplicatorError as exc:
        # A scrape must not fail with the journal: say it is down instead.
        logger.warning("replicator.metrics.journal_failed", extra={"error": str(exc)})
        yield GaugeMetricFamily(f"{prefix}_journal_up", "1 when the journal reads.", 0)
        return
    yield GaugeMetricFamily(f"{prefix}_journal_up", "1 when the journal reads.", 1)
    gauges = (
        (f"{prefix}_queue_pending", "Objects waiting to be applied.", counts.pending),
        (f"{prefix}_queue_due", "Pending objects due now.", counts.due),
        (f"{prefix}_queue_dead", "Objects given up on (dead).", counts.dead),
        (
            f"{prefix}_queue_oldest_pending_seconds",
            "Age of the oldest pending change (0 when none).",
            counts.oldest_pending_s,
        ),
        (
            f"{prefix}_dead_letters",
            "Messages that could not be parsed, kept in the journal.",
            counts.dead_letters,
        ),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=value)
    yield CounterMetricFamily(
        f"{prefix}_dead_letters_pruned",
        "The oldest dead letters pruned to keep the journal's bound (max_dead_letters).",
        value=counts.dead_letters_pruned,
    )


def _feed_metrics(feed: FeedView) -> Iterator[Metric]:
    counters = feed.counters
    messages = CounterMetricFamily(
        "iotdr_replicator_feed_messages",
        "Change-feed messages by what became of them.",
        labels=["outcome"],
    )
    for field, label in _FEED_OUTCOMES:
        messages.add_metric([label], getattr(counters, field))
    yield messages
    yield CounterMetricFamily(
        "iotdr_replicator_feed_connects",
        "Successful connections of the change feed to the broker.",
        value=counters.connects,
    )
    yield CounterMetricFamily(
        "iotdr_replicator_feed_restarts",
        "Times the feed's network thread ended unexpectedly and was started again.",
        value=counters.restarts,
    )
    yield GaugeMetricFamily(
        "iotdr_replicator_feed_subscribed",
        "1 while the feed is connected with its subscriptions granted.",
        value=int(feed.subscribed),
    )
