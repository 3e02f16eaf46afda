"""The change feed logs its broker's reachability: a lost or failing connection, and its return.

:class:`FeedLink` (pure) decides when a failure is worth a warning; the feed is
tested on loopback against a port nothing listens on and a minimal broker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from device_agent.testing import FakeClock
from replicator.runtime._feed import FeedConfig, FeedLink, MqttFeed
from replicator.runtime._journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FEED_LOGGER = "replicator.runtime._feed"


# -- FeedLink: when to warn -----------------------------------------------------------------------


def test_the_first_failure_warns_then_at_most_once_a_minute() -> None:
    link = FeedLink()
    assert (link.failing_since, link.failures) == (None, 0)
    assert link.failed(100.0)
    assert link.failing
    assert not link.failed(101.0)
    assert not link.failed(159.9)
    assert link.failed(160.0)
    assert not link.failed(200.0)
    assert link.failed(220.0)
    assert link.failures == 6


def test_connecting_ends_the_spell_and_says_how_long_it_lasted() -> None:
    link = FeedLink()
    assert link.connected(5.0) is None  # it was not failing
    link.failed(10.0)
    link.failed(12.0)
    assert link.connected(40.0) == (30.0, 2)
    assert not link.failing
    assert link.failed(41.0)  # a new spell warns at once
    assert link.failures == 1


# -- the feed on loopback ----------------------------------------------------------------------


@pytest.fixture
def journal() -> Iterator[Journal]:
    with Journal(":memory:") as opened:
        yield opened


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == FEED_LOGGER and r.getMessage() == event]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def test_an_unreachable_broker_is_one_warning_with_address_and_reason(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=FEED_LOGGER)
    port = unused_port()
    feed = MqttFeed(
        FeedConfig(region="us-east-1", host="127.0.0.1", port=port),
        journal,
        monotonic=FakeClock(
            1000.0
        ).monotonic,  # never a minute later: one warning however often it retries
    )
    feed.start()
    try:
        wait_for(lambda: len(records(caplog, "replicator.feed.unreachable")) >= 2)
    finally:
        feed.stop()
    first, *later = records(caplog, "replicator.feed.unreachable")
    assert first.levelno == logging.WARNING
    assert first.__dict__["broker"] == f"127.0.0.1:{port}"
    assert "refused" in first.__dict__["reason"].lower()
    assert first.__dict__["failed_attempts"] == 1
    assert {r.levelno for r in later} == {logging.DEBUG}


class OneShotBroker:
    """A loopback MQTT 3.1.1 broker: accepts, grants the subscriptions, and can drop a client."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.sessions = 0
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._clients.append(client)
            try:
                self._read_packet(client)  # CONNECT
                client.sendall(b"\x20\x02\x00\x00")  # CONNACK: accepted
                body = self._read_packet(client)  # SUBSCRIBE
                topics = self._count_topics(body[2:])
                client.sendall(bytes([0x90, 2 + topics]) + body[:2] + b"\x01" * topics)
            except OSError:
                continue
            self.sessions += 1

    @staticmethod
    def _read_packet(client: socket.socket) -> bytes:
        client.recv(1)  # fixed header
        length, shift = 0, 0
        while True:
            byte = client.recv(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = client.recv(length - len(body))
            if not chunk:
                raise OSError("closed")
            body += chunk
        return body

    @staticmethod
    def _count_topics(payload: bytes) -> int:
        count, at = 0, 0
        while at < len(payload):
            at += 2 + int.from_bytes(payload[at : at + 2], "big") + 1
            count += 1
        return count

    def drop(self) -> None:
        """Close every client connection, as a broker restart would."""
        for client in self._clients:
            client.shutdown(socket.SHUT_RDWR)
            client.close()
        self._clients.clear()

    def close(self) -> None:
        self.drop()
        self._server.close()


def test_a_lost_connection_warns_and_its_return_is_an_info_line(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=FEED_LOGGER)
    broker = OneShotBroker()
    clock = FakeClock(1000.0)
    feed = MqttFeed(
        FeedConfig(region="us-east-1", host="127.0.0.1", port=broker.port),
        journal,
        monotonic=clock.monotonic,
    )
    feed.start()
    try:
        assert feed.wait_subscribed(10)
        assert len(records(caplog, "replicator.feed.connected")) == 1
        broker.drop()
        wait_for(lambda: bool(records(caplog, "replicator.feed.lost")))
        clock.advance(2.5)
        wait_for(lambda: bool(records(caplog, "replicator.feed.reconnected")))
        assert feed.wait_subscribed(10)
    finally:
        feed.stop()
        broker.close()
    (lost,) = records(caplog, "replicator.feed.lost")
    assert lost.levelno == logging.WARNING
    assert lost.__dict__["broker"] == f"127.0.0.1:{broker.port}"
    assert lost.__dict__["reason"]
    (back,) = records(caplog, "replicator.feed.reconnected")
    assert back.levelno == logging.INFO
    assert (back.__dict__["failing_s"], back.__dict__["failed_attempts"]) == (2.5, 1)
    assert len(records(caplog, "replicator.feed.connected")) == 1  # not logged twice
    (stopped,) = records(caplog, "replicator.feed.disconnected")
    assert stopped.levelno == logging.INFO
