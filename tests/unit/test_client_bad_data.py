"""The agent survives its own bad data (issue 14, item 4), on the in-memory world.

A message too large for AWS IoT is refused at ``publish()``; a message the
broker keeps refusing (it drops the connection on that PUBLISH, as AWS IoT
does for a topic the policy denies on MQTT 3.1.1) is set aside after
``dead_letter_after`` losses without the device leaving its region; what the
application's callbacks and the shadow-reply parser raise never reaches the
transport; an iterated subscription's queue is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

from device_agent import (
    AgentConfig,
    AgentEvent,
    DeviceAgentError,
    DiscoveryConfig,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
    Message,
    MQTTConfig,
    OutboxConfig,
    OutboxEntry,
    OutboxPort,
    Subscription,
    TransportCallbacks,
)
from device_agent._client import MAX_MESSAGE_BYTES
from device_agent._errors import MessageTooLargeError
from device_agent._shadows import ShadowFetcher, shadow_topic
from device_agent._transport import PublishRefusedError
from device_agent.testing import (
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    MemoryTransport,
    PublishedMessage,
    run_virtual,
)

if TYPE_CHECKING:
    from device_agent import ConnectParams, Transport

EAST, WEST = "us-east-1", "us-west-2"
_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_NOWHERE = Path("/nonexistent")
DENIED = "forbidden/"


def _config(network: MemoryNetwork, **changes: object) -> AgentConfig:
    config = AgentConfig(
        identity=IdentityConfig(
            client_id="dev", cert_path=_NOWHERE, key_path=_NOWHERE, ca_path=_NOWHERE
        ),
        discovery=DiscoveryConfig(endpoints=network.endpoints),
        failover=FailoverConfig(reconnect_attempts=2, backoff_base_s=1.0, probe_interval_s=5.0),
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


class _Door:
    """The network's transports, but a PUBLISH under ``forbidden/`` is refused.

    ``ordered`` (the default): what AWS IoT does to an MQTT 3.1.1 client
    publishing where its policy denies it: the broker disconnects it. The
    broker handles a connection's publishes in order, so the messages before
    the refused one are acknowledged first and those after it never are.
    ``abrupt``: as the local door does it, the connection is closed as soon as
    the PUBLISH arrives, and the PUBACKs of the messages before it, still on
    their way back, are lost with it. ``puback``: MQTT 5, a PUBACK with reason
    code 0x87 (not authorized) answers it and the connection stays.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        mode: Literal["ordered", "abrupt", "puback", "throttle"] = "ordered",
        *,
        throttles: int = 0,
    ) -> None:
        self.network = network
        self.mode = mode
        self.throttles = throttles  # "throttle": PUBACK 0x97 this often, then delivered
        self.callbacks: list[TransportCallbacks] = []
        self.refused = 0

    def __call__(self, params: ConnectParams, callbacks: TransportCallbacks) -> Transport:
        self.callbacks.append(callbacks)
        transport = self.network.transport_factory(params, callbacks)
        assert isinstance(transport, MemoryTransport)
        publish = transport.publish
        last: list[asyncio.Future[None]] = []

        async def in_order(topic: str, payload: bytes, qos: int) -> None:
            if self.mode == "throttle" and topic.startswith(DENIED) and transport.connected:
                if self.refused < self.throttles:
                    self.refused += 1
                    await asyncio.sleep(0.01)
                    raise PublishRefusedError(topic, 0x97)
            elif self.mode != "ordered" and topic.startswith(DENIED) and transport.connected:
                self.refused += 1
                if self.mode == "puback":
                    await asyncio.sleep(0.01)
                    raise PublishRefusedError(topic, 0x87)
                transport._lose("publish denied by policy")
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            previous, last[:] = list(last), [done]
            try:
                if previous:
                    await asyncio.wait(previous)
                if self.mode == "ordered" and topic.startswith(DENIED) and transport.connected:
                    self.refused += 1
                    transport._lose("publish denied by policy")
                await publish(topic, payload, qos)
            finally:
                done.set_result(None)

        transport.publish = in_order  # type: ignore[method-assign]
        return transport


def _client(
    network: MemoryNetwork,
    config: AgentConfig,
    events: list[AgentEvent],
    *,
    outbox: OutboxPort | None = None,
    door: _Door | None = None,
) -> FailoverClient:
    return FailoverClient(
        config,
        transport_factory=door or _Door(network),
        clock=LoopClock(),
        rng=random.Random(7),
        on_event=events.append,
        discovery=MemoryDiscovery(network),
        prober=MemoryProber(network, client_id="dev", topic="iotdr/probe/dev"),
        outbox=outbox if outbox is not None else MemoryOutbox(),
        ssl_context=_SSL,
    )


def _named(events: list[AgentEvent], name: str) -> list[AgentEvent]:
    return [e for e in events if e.name == name]


# -- too large --------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_a_message_over_128_kb_is_refused_at_publish(qos: int) -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        outbox = MemoryOutbox()
        client = _client(network, _config(network), [], outbox=outbox)
        topic = "dt/dev/blob"  # 11 bytes: AWS counts it with the payload
        fits = b"x" * (MAX_MESSAGE_BYTES - len(topic))
        with pytest.raises(MessageTooLargeError) as caught:
            await client.publish(topic, fits + b"x", qos=qos)
        error = caught.value
        assert isinstance(error, DeviceAgentError)
        assert (error.topic, error.size, error.limit) == (topic, 128 * 1024 + 1, 131_072)
        assert "\n" not in str(error)
        assert "131072" in str(error)
        assert outbox.depth == 0  # nothing stored
        await client.publish(topic, fits, qos=qos)  # exactly the limit: accepted
        assert outbox.depth == (1 if qos == 1 else 0)
        await client.close()

    run_virtual(scenario())


def test_the_size_counts_the_topic_in_utf8_bytes() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        client = _client(network, _config(network), [])
        topic = "dt/é"  # 5 bytes in UTF-8, 4 characters
        with pytest.raises(MessageTooLargeError):
            await client.publish(topic, b"x" * (MAX_MESSAGE_BYTES - 4))
        await client.publish(topic, b"x" * (MAX_MESSAGE_BYTES - 5))
        await client.close()

    run_virtual(scenario())


# -- a message the broker keeps refusing ----------------------------------------------------------


def _delivered(network: MemoryNetwork) -> list[PublishedMessage]:
    seen: list[PublishedMessage] = []
    network.add_tap(seen.append)
    return seen


def test_a_message_the_broker_keeps_refusing_is_dead_lettered_without_a_failover() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        seen = _delivered(network)
        door = _Door(network)
        events: list[AgentEvent] = []
        outbox = MemoryOutbox()
        client = _client(network, _config(network), events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        await client.publish("dt/dev/n", {"n": 1})
        poison = await client.publish("forbidden/dev", {"n": 2})
        for n in range(3, 8):
            await client.publish("dt/dev/n", {"n": n})
        async with asyncio.timeout(120):
            await client.flush()
        status = client.status()
        await client.close()

        dead = _named(events, "message.dead_lettered")
        assert len(dead) == 1
        assert dead[0].fields["seq"] == poison
        assert dead[0].fields["topic"] == "forbidden/dev"
        assert dead[0].fields["region"] == EAST
        assert [(e.seq, e.topic) for e, _ in outbox.dead_letters()] == [(poison, "forbidden/dev")]
        assert status.dead_lettered == 1
        assert status.outbox_depth == 0
        # Set aside after exactly dead_letter_after (3) refusals: no reconnect loop.
        assert door.refused == 3
        assert len(_named(events, "connection.lost")) == 3
        # The device never left its region: a refused message is no region failure.
        assert {e.fields["region"] for e in _named(events, "connected")} == {EAST}
        assert not _named(events, "failover.started")
        assert network.where("dev") in ([EAST], [])
        # Every other message arrived, in order, in the same region.
        numbers = [m.payload for m in seen if m.topic == "dt/dev/n" and m.region == EAST]
        assert [int(p.decode().split(":")[1].rstrip("}")) for p in dict.fromkeys(numbers)] == [
            1, 3, 4, 5, 6, 7,
        ]  # fmt: skip

    run_virtual(scenario())


def test_the_suspect_is_sent_alone_so_the_messages_behind_it_are_not_blamed() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        door = _Door(network)
        events: list[AgentEvent] = []
        config = _config(network, mqtt=MQTTConfig(max_inflight=20))
        client = _client(network, config, events, door=door)
        await client.start()
        await client.wait_connected(10)
        poison = await client.publish("forbidden/dev", b"no")
        for n in range(10):  # all in flight behind it at the first loss
            await client.publish("dt/dev/n", str(n).encode())
        async with asyncio.timeout(120):
            await client.flush()
        await client.close()
        assert [e.fields["seq"] for e in _named(events, "message.dead_lettered")] == [poison]
        kinds = [e.fields["kind"] for e in _named(events, "connection.lost")]
        assert kinds[1:] == ["publish_refused", "publish_refused"]  # alone in flight

    run_virtual(scenario())


def test_a_real_outage_dead_letters_nothing() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.05)
        events: list[AgentEvent] = []
        client = _client(network, _config(network), events)
        await client.start()
        await client.wait_connected(10)
        for _round in range(4):  # the region drops the device with messages in flight
            for n in range(5):
                await client.publish("dt/dev/n", str(n).encode())
            await asyncio.sleep(0.06)
            network.set_mode(client.status().region or EAST, "down")
            await asyncio.sleep(30)
            network.set_mode(EAST, "up")
            network.set_mode(WEST, "up")
        async with asyncio.timeout(120):
            await client.flush()
        status = client.status()
        await client.close()
        assert len(_named(events, "connection.lost")) >= 3
        assert not _named(events, "message.dead_lettered")
        assert status.dead_lettered == 0
        assert status.outbox_depth == 0

    run_virtual(scenario())


def test_a_refusal_that_loses_the_acks_before_it_blames_only_the_refused_message() -> None:
    # The local door (and AWS) closes the connection on the denied PUBLISH: the messages
    # sent before it reached the broker, but their PUBACKs are lost with the connection.
    # Each message in flight is sent alone on the next connection, in order, so the
    # refused one is found at once and set aside after dead_letter_after losses.
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.05)
        seen = _delivered(network)
        door = _Door(network, "abrupt")
        events: list[AgentEvent] = []
        outbox = MemoryOutbox()
        config = _config(network, mqtt=MQTTConfig(max_inflight=20))
        client = _client(network, config, events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        for n in range(10):  # in flight, unacknowledged, when the poison arrives
            await client.publish("dt/dev/n", str(n).encode())
        poison = await client.publish("forbidden/dev", b"no")
        for n in range(10, 15):
            await client.publish("dt/dev/n", str(n).encode())
        async with asyncio.timeout(120):
            await client.flush()
        await client.close()
        assert [e.fields["seq"] for e in _named(events, "message.dead_lettered")] == [poison]
        assert [e.seq for e, _ in outbox.dead_letters()] == [poison]
        assert door.refused == 3  # not once per message ahead of it
        kinds = [e.fields["kind"] for e in _named(events, "connection.lost")]
        assert kinds == ["closed", "publish_refused", "publish_refused"]
        assert {e.fields["region"] for e in _named(events, "connected")} == {EAST}
        assert not _named(events, "failover.started")
        numbers = {int(m.payload) for m in seen if m.topic == "dt/dev/n"}
        assert numbers == set(range(15))

    run_virtual(scenario())


def test_a_puback_refusing_the_message_counts_like_a_lost_connection() -> None:
    # MQTT 5: AWS IoT (and the local door) answer a denied PUBLISH with PUBACK 0x87 and keep
    # the connection. That PUBACK is no delivery: the message is sent again, and set aside
    # after dead_letter_after refusals; nothing else is held up, the connection stays.
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.01)
        seen = _delivered(network)
        door = _Door(network, "puback")
        events: list[AgentEvent] = []
        outbox = MemoryOutbox()
        client = _client(network, _config(network), events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        await client.publish("dt/dev/n", b"0")
        poison = await client.publish("forbidden/dev", b"no")
        assert poison is not None
        for n in range(1, 5):
            await client.publish("dt/dev/n", str(n).encode())
        with pytest.raises(DeviceAgentError, match="set aside"):
            await client.wait_acked(poison, timeout_s=60)
        async with asyncio.timeout(120):
            await client.flush()
        status = client.status()
        await client.close()
        (dead,) = _named(events, "message.dead_lettered")
        assert dead.fields["seq"] == poison
        assert "0x87" in str(dead.fields["reason"])
        assert [e.seq for e, _ in outbox.dead_letters()] == [poison]
        assert door.refused == 3
        assert status.dead_lettered == 1
        assert status.outbox_depth == 0
        assert not _named(events, "connection.lost")
        assert len(_named(events, "connected")) == 1
        assert poison not in {e.fields["seq"] for e in _named(events, "message.acked")}
        assert {int(m.payload) for m in seen if m.topic == "dt/dev/n"} == set(range(5))
        assert not [m for m in seen if m.topic == "forbidden/dev"]

    run_virtual(scenario())


def test_a_puback_refusal_with_dead_letters_off_keeps_the_message_without_a_loop() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.01)
        door = _Door(network, "puback")
        events: list[AgentEvent] = []
        outbox = MemoryOutbox()
        config = _config(network, outbox=OutboxConfig(dead_letter_after=0))
        client = _client(network, config, events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        poison = await client.publish("forbidden/dev", b"no")
        await client.publish("dt/dev/n", b"yes")
        await asyncio.sleep(30)
        status = client.status()
        kept = [e.seq for e in outbox.peek()]
        await client.close()
        assert door.refused == 1  # once on this connection, not in a loop
        assert kept == [poison]  # kept for the next connection
        assert status.dead_lettered == 0
        assert not _named(events, "message.dead_lettered")

    run_virtual(scenario())


def test_a_puback_quota_exceeded_is_throttling_and_never_sets_the_message_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # MQTT 5 PUBACK 0x97 (quota exceeded): the broker is busy, the message is fine. It is
    # sent again after the throttle backoff however often that happens, never dead-lettered
    # (dead_letter_after is 3 here, the broker throttles it 6 times), the device stays.
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.01)
        seen = _delivered(network)
        door = _Door(network, "throttle", throttles=6)
        events: list[AgentEvent] = []
        outbox = MemoryOutbox()
        client = _client(network, _config(network), events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        busy = await client.publish("forbidden/dev", b"busy")
        assert busy is not None
        await client.publish("dt/dev/n", b"0")
        async with asyncio.timeout(600):
            await client.wait_acked(busy, timeout_s=600)
            await client.flush()
        status = client.status()
        await client.close()
        assert door.refused == 6
        assert status.dead_lettered == 0
        assert not outbox.dead_letters()
        assert not _named(events, "message.dead_lettered")
        assert not _named(events, "connection.lost")
        assert [m.payload for m in seen if m.topic == "forbidden/dev"] == [b"busy"]
        assert [m.payload for m in seen if m.topic == "dt/dev/n"] == [b"0"]

    with caplog.at_level(logging.WARNING, logger="device_agent"):
        run_virtual(scenario())
    throttled = [r for r in caplog.records if r.getMessage() == "publish.throttled"]
    assert [getattr(r, "throttles", None) for r in throttled] == [1, 2, 3, 4, 5, 6]
    assert not [r for r in caplog.records if r.getMessage() == "publish.refused"]


class _PlainOutbox:
    """An outbox port without dead letters (like a fleet host's shared file)."""

    def __init__(self) -> None:
        self._inner = MemoryOutbox()

    @property
    def depth(self) -> int:
        return self._inner.depth

    def put(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        return self._inner.put(topic, payload, qos)

    def peek(self, limit: int = 100, *, after_seq: int = 0) -> list[OutboxEntry]:
        return self._inner.peek(limit, after_seq=after_seq)

    def mark_sent(self, seq: int) -> None:
        self._inner.mark_sent(seq)

    def ack(self, seq: int) -> bool:
        return self._inner.ack(seq)

    def close(self) -> None:
        self._inner.close()


def test_without_dead_letters_the_message_is_skipped_and_kept() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        door = _Door(network)
        events: list[AgentEvent] = []
        outbox = _PlainOutbox()
        client = _client(network, _config(network), events, outbox=outbox, door=door)
        await client.start()
        await client.wait_connected(10)
        poison = await client.publish("forbidden/dev", b"no")
        after = await client.publish("dt/dev/n", b"yes")
        assert after is not None
        async with asyncio.timeout(120):
            await client.flush()  # returns: only the skipped message is left
        status = client.status()
        kept = [e.seq for e in outbox.peek()]
        await client.close()
        assert door.refused == 3
        assert status.dead_lettered == 1
        assert kept == [poison]  # kept for the next start

    run_virtual(scenario())


# -- callbacks and the shadow-reply parser ----------------------------------------------------


def test_a_raising_callback_stays_out_of_the_transport(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        door = _Door(network)
        client = _client(network, _config(network), [], door=door)
        await client.start()
        await client.wait_connected(10)
        got: list[Message] = []

        def broken(message: Message) -> None:
            raise RuntimeError(f"application bug on {message.topic}")

        async def broken_later(message: Message) -> None:
            await asyncio.sleep(0)
            raise ValueError("async application bug")

        client.subscribe("cmd/#", callback=broken)
        client.subscribe("cmd/#", callback=broken_later)
        client.subscribe("cmd/#", callback=got.append)
        await asyncio.sleep(1)
        # Straight into what the transport calls (paho's reader, the CRT's callback).
        door.callbacks[-1].on_message("cmd/dev/1", b"{}", 1, False)
        network.publish(EAST, "cmd/dev/2", b"{}")  # and through the broker
        await asyncio.sleep(1)
        connected = client.status().region
        await client.close()
        assert [m.topic for m in got] == ["cmd/dev/1", "cmd/dev/2"]
        assert connected == EAST

    with caplog.at_level(logging.ERROR, logger="device_agent"):
        run_virtual(scenario())
    failures = [r for r in caplog.records if r.getMessage() == "subscription.callback_failed"]
    assert len(failures) == 4  # two callbacks, two messages
    assert {r.exc_info[1].__class__ for r in failures if r.exc_info} == {RuntimeError, ValueError}


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not utf-8", b"[" * 100_000, b"{not json", b"[1, 2]"],
    ids=["not-utf8", "nested-too-deep", "not-json", "not-an-object"],
)
def test_a_bad_shadow_reply_is_a_failed_fetch_not_an_exception(payload: bytes) -> None:
    async def scenario() -> None:
        fetcher = ShadowFetcher("dev", ["config"])
        future: asyncio.Future[tuple[bool, dict[str, object]]] = (
            asyncio.get_running_loop().create_future()
        )
        fetcher._waiting["config:abc"] = future
        topic = shadow_topic("dev", "config", "get/accepted")
        assert fetcher.on_message(topic, payload) is True
        accepted, document = await future
        assert accepted
        assert "not" in str(document["message"])

    asyncio.run(scenario())


def test_a_raising_shadow_callback_is_logged_and_the_others_still_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handed: list[str | None] = []

    def on_shadow(snapshot: object) -> None:
        name = getattr(snapshot, "name", None)
        handed.append(name)
        if name is None:
            raise RuntimeError("application bug")

    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        config = _config(network, named_shadows=("a", "b"))
        client = FailoverClient(
            config,
            transport_factory=network.transport_factory,
            clock=LoopClock(),
            rng=random.Random(1),
            on_shadow=on_shadow,
            discovery=MemoryDiscovery(network),
            prober=MemoryProber(network, client_id="dev", topic="iotdr/probe/dev"),
            outbox=MemoryOutbox(),
            ssl_context=_SSL,
        )
        await client.start()
        await client.wait_connected(10)
        await asyncio.sleep(30)  # nobody answers: each fetch times out, each is handed over
        await client.close()

    with caplog.at_level(logging.ERROR, logger="device_agent"):
        run_virtual(scenario())
    assert handed == [None, "a", "b"]
    assert [r.getMessage() for r in caplog.records].count("shadow.callback_failed") == 1


# -- the subscription queue -------------------------------------------------------------------


def _message(n: int) -> Message:
    return Message(f"cmd/{n}", str(n).encode(), 1, False, EAST)


@pytest.mark.parametrize(
    ("overflow", "kept"), [("drop_oldest", [3, 4, 5]), ("drop_newest", [1, 2, 3])]
)
def test_the_subscription_queue_is_bounded(overflow: str, kept: list[int]) -> None:
    async def scenario() -> list[int]:
        subscription = Subscription("cmd/#", 1, queue_size=3, overflow=overflow)  # type: ignore[arg-type]
        offered = [subscription.offer(_message(n)) for n in range(1, 6)]
        assert offered == [True, True, True, False, False]
        assert subscription.dropped == 2
        assert subscription.waiting == 3
        return [int((await subscription.get()).payload) for _ in range(3)]

    assert asyncio.run(scenario()) == kept


def test_drops_are_logged_at_the_1st_10th_and_100th(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        subscription = Subscription("cmd/#", 1, queue_size=1)
        for n in range(201):
            subscription.offer(_message(n))
        assert subscription.dropped == 200

    with caplog.at_level(logging.WARNING, logger="device_agent"):
        asyncio.run(scenario())
    logged = [r for r in caplog.records if r.getMessage() == "subscription.dropped"]
    assert [r.__dict__["dropped"] for r in logged] == [1, 10, 100]


def test_the_client_bounds_its_subscriptions_and_counts_the_drops() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        config = _config(network, mqtt=MQTTConfig(subscription_queue=2))
        client = _client(network, config, [])
        await client.start()
        await client.wait_connected(10)
        subscription = client.subscribe("cmd/#")
        await asyncio.sleep(1)
        for n in range(5):
            network.publish(EAST, f"cmd/{n}", str(n).encode())
        await asyncio.sleep(1)
        assert subscription.waiting == 2
        assert client.status().subscription_drops == 3
        assert client.status().as_dict()["subscription_drops"] == 3
        assert [(await subscription.get()).topic for _ in range(2)] == ["cmd/3", "cmd/4"]
        await client.close()

    run_virtual(scenario())


def test_a_bad_subscription_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        Subscription("cmd/#", 1, queue_size=0)
    with pytest.raises(ValueError, match="overflow"):
        Subscription("cmd/#", 1, overflow="block")  # type: ignore[arg-type]


def test_the_outbox_config_defaults() -> None:
    assert OutboxConfig().dead_letter_after == 3
    assert OutboxConfig().flush_on_stop_s == 5.0
