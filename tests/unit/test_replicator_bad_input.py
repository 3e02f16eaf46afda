"""Bad input never stops replication: every message ends journaled, ignored or dead-lettered.

The parser, the MQTT feed (on a loopback broker that delivers QoS 1 messages and
counts the PUBACKs), the feed's network thread, and the Lambda handler.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.core._records import DeadLetter, Ignored, parse_message, parse_sqs_body
from replicator.lambda_handler import LambdaReplicator
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._feed import FEED_TOPICS, FeedConfig, MqttFeed, journal_message
from replicator.runtime._host import ServiceOps, run_service
from replicator.runtime._journal import Journal
from simulators import InMemoryRegion

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EAST, WEST = "us-east-1", "us-west-2"
DEEP = "[" * 100_000 + "]" * 100_000

HOSTILE: list[tuple[str, str | bytes]] = [
    ("$aws/things/t1/shadow/update/documents", '{"timestamp": Infinity, "current": {}}'),
    ("$aws/things/t1/shadow/update/documents", '{"timestamp": NaN, "current": {}}'),
    ("$aws/things/t1/shadow/update/documents", '{"timestamp": -Infinity, "current": {}}'),
    ("$aws/things/t1/shadow/update/documents", '{"timestamp": 1e400, "current": {}}'),
    ("$aws/things/t1/shadow/delete/accepted", '{"timestamp": 1e300}'),
    ("$aws/events/thing/t1/created", '{"timestamp": Infinity, "operation": "CREATED"}'),
    ("$aws/events/thing/t1/created", DEEP),
    ("iotdr/replicate", DEEP),
    ("iotdr/replicate", '{"kind": "thing", "name": NaN}'),
    ("$aws/events/thing/t1/created", b"\xff\xfe\x00"),
    ("iotdr/replicate", '{"kind": "thing", "name": "\\ud800"}'),
]


@pytest.mark.parametrize(("topic", "payload"), HOSTILE)
def test_hostile_payloads_become_dead_letters_with_a_reason(
    topic: str, payload: str | bytes
) -> None:
    result = parse_message(topic, payload, region=EAST)
    assert isinstance(result, DeadLetter)
    assert result.reason
    result.payload.encode("utf-8")  # storable: no lone surrogates


def test_hostile_sqs_bodies_become_dead_letters() -> None:
    for topic, payload in HOSTILE:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        body = json.dumps({"topic": topic, "payload": text})
        assert isinstance(parse_sqs_body(body, region=EAST), DeadLetter)
    assert isinstance(parse_sqs_body(DEEP, region=EAST), DeadLetter)
    assert isinstance(parse_sqs_body('{"topic": NaN}', region=EAST), DeadLetter)


def test_a_lone_surrogate_in_a_payload_is_journaled_as_a_dead_letter() -> None:
    with Journal(":memory:") as journal:
        outcome = journal_message(
            journal, "iotdr/replicate", '{"kind": "thing", "name": "\\ud800"}', EAST, 1.0
        )
        assert outcome == "dead_letter"
        assert journal.counts(1.0).dead_letters == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["timestamp", "current", "version", "kind", "name", "clientToken"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)
topics = st.sampled_from(
    [
        "$aws/events/thing/t1/created",
        "$aws/events/certificates/registered/" + "ab" * 32,
        "$aws/events/thingGroupMembership/thingGroup/g/thing/t/added",
        "$aws/things/t1/shadow/update/documents",
        "$aws/things/t1/shadow/name/s/delete/accepted",
        "iotdr/replicate",
        *FEED_TOPICS,
    ]
) | st.text(max_size=40)


def _text(value: object) -> str:
    return json.dumps(value, allow_nan=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=st.binary(max_size=200) | json_values.map(_text))
def test_fuzz_nothing_escapes_the_feed_and_everything_is_accounted_for(
    topic: str, payload: bytes | str
) -> None:
    with Journal(":memory:") as journal:
        outcome = journal_message(journal, topic, payload, EAST, 1.0)
        counts = journal.counts(1.0)
    assert outcome in {"accepted", "ignored", "dead_letter"}
    assert counts.dead_letters == (outcome == "dead_letter")
    assert (counts.pending > 0) == (outcome == "accepted")


@pytest.fixture
def lambda_replicator() -> Iterator[LambdaReplicator]:
    engine = Engine(
        source=InMemoryRegion(EAST),
        target=InMemoryRegion(WEST),
        journal=Journal(":memory:"),
        config=EngineConfig(workers=1, thing_recheck_s=None),
        wall=lambda: 1_700_000_000.0,
    )
    with LambdaReplicator(engine, workers=1) as replicator:
        yield replicator


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    topic=topics,
    payload=json_values,
    body=st.none() | st.text(max_size=50) | json_values.map(_text),
)
def test_fuzz_the_lambda_handler_acknowledges_or_dead_letters_every_message(
    lambda_replicator: LambdaReplicator, topic: str, payload: Any, body: str | None
) -> None:
    sqs_body = body if body is not None else json.dumps({"topic": topic, "payload": payload})
    journal = lambda_replicator.engine.journal
    before = journal.counts(0).dead_letters
    event = {"Records": [{"messageId": "m1", "body": sqs_body, "attributes": {}}]}
    response = lambda_replicator.handle(event)
    assert response["batchItemFailures"] in ([], [{"itemIdentifier": "m1"}])
    parsed = parse_sqs_body(sqs_body, region=EAST)
    if isinstance(parsed, DeadLetter):
        assert journal.counts(0).dead_letters == before + 1
        assert response["batchItemFailures"] == []
    elif isinstance(parsed, Ignored):
        assert response["batchItemFailures"] == []


@pytest.mark.parametrize("event", [None, [], {"Records": 3}, {"Records": [3, None]}, "x"])
def test_the_lambda_handler_takes_any_event_shape(
    lambda_replicator: LambdaReplicator, event: Any
) -> None:
    assert lambda_replicator.handle(event) == {"batchItemFailures": []}


class PublishingBroker:
    """A loopback MQTT 3.1.1 broker for one client: grants subscriptions, delivers QoS 1
    messages on request, and records the packet ids the client acknowledged."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.acked: list[int] = []
        self.sessions = 0
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                self._read_packet(client)  # CONNECT
                client.sendall(b"\x20\x02\x00\x00")
                _, body = self._read_packet(client)  # SUBSCRIBE
                count, at = 0, 2
                while at < len(body):
                    at += 2 + int.from_bytes(body[at : at + 2], "big") + 1
                    count += 1
                # The session is the broker's before the SUBACK leaves: a client that
                # saw its SUBACK may be published to at once.
                with self._lock:
                    self._client = client
                    self.sessions += 1
                client.sendall(bytes([0x90, 2 + count]) + body[:2] + b"\x01" * count)
            except OSError:
                continue
            threading.Thread(target=self._read_acks, args=(client,), daemon=True).start()

    def _read_acks(self, client: socket.socket) -> None:
        while True:
            try:
                kind, body = self._read_packet(client)
            except (OSError, IndexError):
                return
            if kind & 0xF0 == 0x40:  # PUBACK
                with self._lock:
                    self.acked.append(int.from_bytes(body[:2], "big"))

    @staticmethod
    def _read_packet(client: socket.socket) -> tuple[int, bytes]:
        kind = client.recv(1)[0]
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
        return kind, body

    def publish(self, packet_id: int, topic: str, payload: bytes) -> None:
        encoded = topic.encode()
        body = len(encoded).to_bytes(2, "big") + encoded + packet_id.to_bytes(2, "big") + payload
        length, remaining = b"", len(body)
        while True:
            byte, remaining = remaining % 128, remaining // 128
            length += bytes([byte | (0x80 if remaining else 0)])
            if not remaining:
                break
        with self._lock:
            assert self._client is not None
            self._client.sendall(b"\x32" + length + body)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
        self._server.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


@pytest.fixture
def broker() -> Iterator[PublishingBroker]:
    server = PublishingBroker()
    yield server
    server.close()


def test_a_malformed_message_is_acknowledged_and_dead_lettered_and_the_feed_goes_on(
    broker: PublishingBroker,
) -> None:
    with Journal(":memory:") as journal:
        feed = MqttFeed(FeedConfig(region=EAST, host="127.0.0.1", port=broker.port), journal)
        feed.start()
        try:
            assert feed.wait_subscribed(10)
            for packet_id, (topic, payload) in enumerate(HOSTILE, start=1):
                data = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
                broker.publish(packet_id, topic, data)
            good = len(HOSTILE) + 1
            broker.publish(good, "$aws/events/thing/pump-1/created", b'{"operation": "CREATED"}')
            wait_for(lambda: good in broker.acked)
            assert sorted(broker.acked) == list(range(1, good + 1))
            assert feed.subscribed
            assert journal.counts(0).dead_letters == len(HOSTILE)
            assert journal.counts(0).pending == 1
            assert feed.failed is None
        finally:
            feed.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_turns_readiness_red_and_is_restarted(
    broker: PublishingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal(":memory:") as journal:
        feed = MqttFeed(FeedConfig(region=EAST, host="127.0.0.1", port=broker.port), journal)
        feed.start()
        try:
            assert feed.wait_subscribed(10)
            client: Any = feed._client

            def die(timeout: float = 1.0) -> int:
                del timeout
                raise RuntimeError("a bug in the network loop")

            monkeypatch.setattr(client, "_loop", die)
            broker.publish(1, "$aws/events/thing/pump-1/created", b'{"operation": "CREATED"}')
            wait_for(lambda: not feed.subscribed)  # readiness reads this
            monkeypatch.undo()
            assert feed.keep_running()
            assert feed.wait_subscribed(10)
            wait_for(lambda: feed.subscribed and broker.sessions == 2)
            assert feed.counters.restarts == 1
            assert not feed.keep_running()
        finally:
            feed.stop()


def test_an_exception_paho_caught_in_a_callback_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Journal(":memory:") as journal:
        feed = MqttFeed(FeedConfig(region=EAST, host="127.0.0.1", port=1883), journal)
        client: Any = feed._client
        assert client.suppress_exceptions
        with caplog.at_level("DEBUG", logger="replicator.runtime._feed"):
            client.on_log(client, None, 8, "Caught exception in on_connect: boom")
            client.on_log(client, None, 16, "Sending PINGREQ")
    lines = [r for r in caplog.records if r.name == "replicator.runtime._feed"]
    assert [(r.getMessage(), r.levelname) for r in lines] == [
        ("replicator.feed.callback_failed", "ERROR")
    ]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_service_host_restarts_a_feed_whose_network_thread_died(
    broker: PublishingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's watch notices the dead thread, the feed reconnects, the metric says so."""
    loop = paho.Client._loop
    broken = threading.Event()

    def loop_once_broken(self: paho.Client, timeout: float = 1.0) -> Any:
        if broken.is_set():
            broken.clear()
            raise RuntimeError("a bug in the network loop")
        return loop(self, timeout)

    monkeypatch.setattr(paho.Client, "_loop", loop_once_broken)
    ops = ServiceOps()
    engine = Engine(
        source=InMemoryRegion(EAST),
        target=InMemoryRegion(WEST),
        journal=Journal(":memory:"),
        config=EngineConfig(workers=1, thing_recheck_s=None, poll_s=0.05),
    )
    stop = threading.Event()
    service = threading.Thread(
        target=run_service,
        args=(engine, FeedConfig(region=EAST, host="127.0.0.1", port=broker.port)),
        kwargs={"report": lambda line: None, "stop": stop, "ops": ops},
    )
    service.start()

    def metric(name: str) -> float:
        for line in ops.metrics.exposition().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return -1.0

    try:
        wait_for(lambda: broker.sessions == 1 and metric("iotdr_replicator_feed_subscribed") == 1)
        broken.set()
        wait_for(lambda: metric("iotdr_replicator_feed_restarts_total") == 1)
        wait_for(lambda: broker.sessions == 2 and metric("iotdr_replicator_feed_subscribed") == 1)
        assert ops.health.readiness().ok
    finally:
        stop.set()
        service.join(15)
        engine.journal.close()
    assert not service.is_alive()
