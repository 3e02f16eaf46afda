"""The change feed: the primary's registry events and shadow messages into the journal.

:class:`MqttFeed` is a paho-mqtt client on the source region's broker with a
persistent session (``clean_session`` false, a fixed client id, QoS 1), so
that messages published while the replicator is away wait for it (AWS keeps
a persistent session an hour). It subscribes to :data:`FEED_TOPICS` and
acknowledges a message only after its record is committed to the journal
(paho's manual acknowledgement): a crash before the commit means the broker
delivers the message again. (The Lambda's SQS bodies, the same payloads as
``{"topic", "payload"}``, go through the same parser and
``Journal.journal_parsed``: ``lambda_handler.py``.)

A message that does not parse goes to the journal's dead letters with the
reason; one that needs nothing (a presence event, the replicator's own shadow
write echoed back) is counted and dropped.

A broker that cannot be reached is logged, not only shown by ``/readyz``: a
warning when the connection is lost or the first attempt fails, then at most
one a minute while paho keeps retrying (each with the attempts so far), and an
info line when it connects again (:class:`FeedLink` decides, the feed logs).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from replicator._errors import JournalError, ReplicatorError
from replicator.core._records import DeadLetter, Ignored, parse_message
from replicator.runtime._feed_config import FEED_TOPICS, FeedConfig, is_loopback, tls_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from paho.mqtt.reasoncodes import ReasonCode

    from replicator.runtime._journal import Journal

__all__ = [
    "FEED_TOPICS",
    "FeedConfig",
    "FeedCounters",
    "FeedLink",
    "MqttFeed",
    "is_loopback",
    "journal_message",
    "tls_context",
]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FeedCounters:
    """What the feed saw."""

    received: int = 0
    accepted: int = 0
    ignored: int = 0
    dead_letters: int = 0
    journal_errors: int = 0
    connects: int = 0
    restarts: int = 0


@dataclass(slots=True)
class FeedLink:
    """The feed's connection as its log tells it: when a failure is worth a warning.

    Pure: the feed reports what paho saw, with the time, and logs what this
    answers. Failing starts at a lost connection or a failed first attempt and
    ends at the next accepted connection.

    Attributes:
        warn_every_s: while failing, the least time between two warnings.
        failing_since: when failing started (monotonic seconds), or None.
        failures: failed attempts (and the loss) since then.
        warned_at: when the last warning of this failing spell was logged.
    """

    warn_every_s: float = 60.0
    failing_since: float | None = None
    failures: int = 0
    warned_at: float | None = None

    @property
    def failing(self) -> bool:
        """Whether the feed is between a failure and its next connection."""
        return self.failing_since is not None

    def failed(self, now: float) -> bool:
        """Count one failure at ``now``; whether to warn (the first, then once a minute)."""
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        if self.warned_at is not None and now - self.warned_at < self.warn_every_s:
            return False
        self.warned_at = now
        return True

    def connected(self, now: float) -> tuple[float, int] | None:
        """The feed connected at ``now``: how long it failed and how often, if it was failing."""
        if self.failing_since is None:
            return None
        spell = (now - self.failing_since, self.failures)
        self.failing_since, self.failures, self.warned_at = None, 0, None
        return spell


class MqttFeed:
    """Subscribes to the source region's change feed and journals every change.

    Args:
        config: broker and session.
        journal: where changes go.
        wall: epoch seconds (journal times).
        monotonic: seconds, for how often a failing connection is logged.
    """

    def __init__(
        self,
        config: FeedConfig,
        journal: Journal,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.counters = FeedCounters()
        self.failed: ReplicatorError | None = None
        self._journal = journal
        self._wall = wall
        self._monotonic = monotonic
        self._link = FeedLink()  # paho's network thread only
        self._connected = False
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._running = False  # between start() and stop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.manual_ack_set(True)
        client.reconnect_delay_set(1, 30)
        # An exception in a callback would end paho's network thread: logged instead
        client.suppress_exceptions = True
        client.on_log = self._on_log
        if config.tls:
            client.tls_set_context(tls_context(config))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def __repr__(self) -> str:
        return (
            f"MqttFeed({self.config.host}:{self.config.port}, client_id={self.config.client_id!r}, "
            f"subscribed={self.subscribed}, accepted={self.counters.accepted})"
        )

    @property
    def broker(self) -> str:
        """``host:port`` of the broker, as logged."""
        return f"{self.config.host}:{self.config.port}"

    @property
    def subscribed(self) -> bool:
        """Whether the subscriptions of the current connection were granted (and paho runs)."""
        return self._subscribed.is_set() and (not self._running or self._network_alive())

    def _network_alive(self) -> bool:
        thread = getattr(self._client, "_thread", None)  # paho's; None once it ended
        return isinstance(thread, threading.Thread) and thread.is_alive()

    def start(self) -> None:
        """Connect (and keep reconnecting) in paho's network thread."""
        self._running = True
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()

    def keep_running(self) -> bool:
        """Restart paho's network thread if it ended while running; whether it had to.

        The host calls this now and then: until then :attr:`subscribed` is
        false, so readiness is red. Messages not acknowledged come again in
        the persistent session.
        """
        if not self._running or self._network_alive():
            return False
        self._subscribed.clear()
        with self._lock:
            self.counters.restarts += 1
        logger.error(
            "replicator.feed.restarted",
            extra={"broker": self.broker, "restarts": self.counters.restarts},
        )
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()
        return True

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the subscriptions are granted."""
        return self._subscribed.wait(timeout_s)

    def stop(self) -> None:
        """Disconnect, keeping the session (and its queued messages) at the broker."""
        self._running = False
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()

    def _on_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        """One line of paho's log: only an exception it caught in a callback is worth one."""
        del client, userdata, level
        if text.startswith("Caught exception in"):
            logger.error("replicator.feed.callback_failed", extra={"error": text})

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        del userdata, properties
        if reason.is_failure:
            self._failure("replicator.feed.refused", str(reason))
            return
        self.counters.connects += 1
        self._connected = True
        spell = self._link.connected(self._monotonic())
        if spell is None:
            logger.info(
                "replicator.feed.connected",
                extra={"broker": self.broker, "session": flags.session_present},
            )
        else:
            logger.info(
                "replicator.feed.reconnected",
                extra={
                    "broker": self.broker,
                    "session": flags.session_present,
                    "failing_s": round(spell[0], 1),
                    "failed_attempts": spell[1],
                },
            )
        client.subscribe([(topic, 1) for topic in self.config.topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: object,
    ) -> None:
        del client, userdata, mid, properties
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.error("replicator.feed.subscribe_refused", extra={"reasons": refused})
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        del client, userdata, flags, properties
        self._subscribed.clear()
        was_connected, self._connected = self._connected, False
        if was_connected and reason.is_failure:
            self._failure("replicator.feed.lost", str(reason))
        elif was_connected:
            logger.info(
                "replicator.feed.disconnected", extra={"broker": self.broker, "reason": str(reason)}
            )

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        del client, userdata
        # paho calls this inside its ``except OSError`` and does not pass the error on.
        error = sys.exc_info()[1]
        self._failure("replicator.feed.unreachable", str(error or "connection failed"))

    def _failure(self, event: str, reason: str) -> None:
        """One lost connection or failed attempt: a warning, unless one was logged lately."""
        if self._link.failed(self._monotonic()):
            logger.warning(
                event,
                extra={
                    "broker": self.broker,
                    "reason": reason,
                    "failed_attempts": self._link.failures,
                },
            )
        else:
            logger.debug(event, extra={"broker": self.broker, "reason": reason})

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        del userdata
        with self._lock:
            self.counters.received += 1
        try:
            outcome = journal_message(
                self._journal,
                message.topic,
                bytes(message.payload),
                self.config.region,
                self._wall(),
            )
        except Exception as exc:
            # Not acknowledged: the session keeps the message for the next connection.
            # The service sees ``failed`` and stops; its supervisor restarts it.
            error = (
                exc
                if isinstance(exc, ReplicatorError)
                else JournalError(self._journal.path, f"{type(exc).__name__}: {exc}")
            )
            with self._lock:
                self.counters.journal_errors += 1
                self.failed = error
            logger.exception("replicator.feed.journal_failed", extra={"error": str(error)})
            return
        with self._lock:
            if outcome == "accepted":
                self.counters.accepted += 1
            elif outcome == "ignored":
                self.counters.ignored += 1
            else:
                self.counters.dead_letters += 1
        if message.qos > 0:
            client.ack(message.mid, message.qos)


def journal_message(
    journal: Journal, topic: str, payload: bytes | str, region: str, now: float
) -> str:
    """Parse one message and journal it; return ``accepted``, ``ignored`` or ``dead_letter``.

    A message that does not parse, or whose record cannot be journaled for
    anything but a journal failure, is dead-lettered.

    Raises:
        JournalError: the journal could not commit (the message must not be acknowledged).
    """
    parsed = parse_message(topic, payload, region=region)  # never raises
    result, _ = journal.journal_parsed(parsed, topic=topic, raw=payload, now=now)
    if isinstance(result, Ignored):
        logger.debug("replicator.feed.ignored", extra={"topic": topic, "reason": result.reason})
        return "ignored"
    if isinstance(result, DeadLetter):
        logger.warning(
            "replicator.feed.dead_letter", extra={"topic": topic, "reason": result.reason}
        )
        return "dead_letter"
    return "accepted"
