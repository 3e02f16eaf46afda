"""The in-memory MQTT world: brokers, fault modes, admission, taps, prober, DNS, outbox."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import pytest

from device_agent import (
    ConnectError,
    ConnectParams,
    DiscoveryError,
    OutboxFullError,
    TransportCallbacks,
    TransportClosedError,
)
from device_agent.testing import (
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    MemoryTransport,
    PublishedMessage,
    run_virtual,
)

if TYPE_CHECKING:
    from device_agent import ConnectErrorKind

EAST, WEST = "us-east-1", "us-west-2"
_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class Peer:
    """One transport and what it received."""

    def __init__(self, network: MemoryNetwork, region: str, client_id: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.lost: list[str] = []
        endpoint = network.endpoints[region]
        params = ConnectParams(
            endpoint=endpoint,
            address=network.address_of(endpoint.host) or "",
            client_id=client_id,
            ssl_context=_SSL,
            timeout_s=5.0,
        )
        callbacks = TransportCallbacks(
            on_message=lambda t, p, q, r: self.messages.append((t, p, q)),
            on_lost=self.lost.append,
        )
        self.transport: MemoryTransport = network.transport_factory(params, callbacks)


def test_publish_reaches_matching_subscribers_of_the_same_region_with_latency() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.1)
        tapped: list[PublishedMessage] = []
        network.add_tap(tapped.append)
        loop = asyncio.get_running_loop()
        a, b, c = Peer(network, EAST, "a"), Peer(network, EAST, "b"), Peer(network, WEST, "c")
        for peer in (a, b, c):
            assert await peer.transport.connect() is False
        assert loop.time() == pytest.approx(0.6, abs=1e-5)  # three in turn
        assert await b.transport.subscribe("t/+/x", 1) == 1
        await b.transport.subscribe("t/#", 0)
        await c.transport.subscribe("#", 1)
        started = loop.time()
        await a.transport.publish("t/1/x", b"hello", 1)
        assert loop.time() - started == pytest.approx(0.2, abs=1e-5)  # PUBACK after a round trip
        await asyncio.sleep(0.2)
        assert b.messages == [("t/1/x", b"hello", 1)]  # once, at the best granted QoS
        assert c.messages == []  # another region
        assert [(m.region, m.client_id, m.topic, m.qos) for m in tapped] == [
            (EAST, "a", "t/1/x", 1)
        ]
        assert network.publish(EAST, "t/2/x", b"cloud") == 1
        await asyncio.sleep(0.2)
        assert b.messages[-1] == ("t/2/x", b"cloud", 1)
        assert len(tapped) == 1  # the cloud side's own publishes are not tapped
        await b.transport.unsubscribe("t/+/x")
        await b.transport.unsubscribe("t/#")
        await asyncio.sleep(0.2)
        assert network.publish(EAST, "t/3/x", b"-") == 0
        for peer in (a, b, c):
            await peer.transport.disconnect()
        assert network.region(EAST).stats.connects == 2
        assert network.region(EAST).stats.messages == 1

    run_virtual(scenario())


def test_a_second_connect_with_the_same_client_id_kicks_the_first_off() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        first, second = Peer(network, EAST, "dev"), Peer(network, EAST, "dev")
        await first.transport.connect()
        await second.transport.connect()
        await asyncio.sleep(0)
        assert first.lost == ["closed"]
        assert not first.transport.connected
        assert second.transport.connected
        assert [(e.kind, e.reason) for e in network.connection_log] == [
            ("open", "connect"),
            ("close", "takeover"),
            ("open", "connect"),
        ]
        with pytest.raises(TransportClosedError):
            await first.transport.publish("t", b"", 1)

    run_virtual(scenario())


def test_down_refuses_connects_and_drops_live_connections() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.05)
        live = Peer(network, EAST, "live")
        await live.transport.connect()
        pending = asyncio.create_task(live.transport.publish("t", b"x", 1))
        await asyncio.sleep(0)
        network.set_mode(EAST, "down")
        with pytest.raises(TransportClosedError):
            await pending
        await asyncio.sleep(0)
        assert live.lost == ["closed"]
        with pytest.raises(ConnectError) as refused:
            await Peer(network, EAST, "new").transport.connect()
        assert refused.value.kind == "refused"
        stats = network.region(EAST).stats
        assert stats.refusals["refused"] == 1
        assert stats.lost == 1
        assert not network.healthy(EAST)

    run_virtual(scenario())


def test_blackhole_times_out_connects_and_holds_live_traffic_until_healed() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.05)
        loop = asyncio.get_running_loop()
        sender, receiver = Peer(network, EAST, "s"), Peer(network, EAST, "r")
        await sender.transport.connect()
        await receiver.transport.connect()
        await receiver.transport.subscribe("t", 1)
        network.set_mode(EAST, "blackhole")
        started = loop.time()
        with pytest.raises(ConnectError) as timed_out:
            await Peer(network, EAST, "new").transport.connect()
        assert timed_out.value.kind == "timeout"
        assert loop.time() - started == pytest.approx(5.0, abs=1e-5)  # the connect deadline
        publish = asyncio.create_task(sender.transport.publish("t", b"held", 1))
        await asyncio.sleep(60)
        assert not publish.done()
        assert receiver.messages == []
        assert sender.transport.connected  # silent, not closed
        network.heal(EAST)
        await asyncio.wait_for(publish, 1)
        await asyncio.sleep(1)
        assert receiver.messages == [("t", b"held", 1)]
        network.set_mode(EAST, "partial")
        assert network.healthy(EAST)
        stuck = asyncio.create_task(sender.transport.publish("t", b"lost", 1))
        await asyncio.sleep(1)
        await sender.transport.disconnect()
        with pytest.raises(TransportClosedError):
            await stuck
        assert network.region(EAST).stats.timeouts == 1

    run_virtual(scenario())


def test_the_admission_hook_refuses_and_is_counted() -> None:
    async def scenario() -> None:
        def door(region: str, client_id: str) -> ConnectErrorKind | None:
            return "not_authorized" if client_id.startswith("new") else None

        network = MemoryNetwork([EAST, WEST], admit=door)
        with pytest.raises(ConnectError) as refused:
            await Peer(network, WEST, "new-1").transport.connect()
        assert refused.value.kind == "not_authorized"
        await Peer(network, WEST, "old-1").transport.connect()
        stats = network.region(WEST).stats
        assert (stats.attempts, stats.connects, stats.refusals["not_authorized"]) == (2, 1, 1)
        assert network.connected(WEST) == {"old-1"}
        assert network.where("old-1") == [WEST]

    run_virtual(scenario())


def test_overlaps_finds_a_client_connected_to_two_regions() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        east, west = Peer(network, EAST, "dev"), Peer(network, WEST, "dev")
        await east.transport.connect()
        await west.transport.connect()
        assert [(e.region, e.kind) for e in network.overlaps()] == [(WEST, "open")]
        await east.transport.disconnect()
        await west.transport.disconnect()
        await Peer(network, EAST, "dev").transport.connect()
        assert len(network.overlaps()) == 1

    run_virtual(scenario())


def test_memory_prober_follows_the_fault_modes() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST], latency_s=0.01)
        prober = MemoryProber(network, client_id="dev", topic="probe/dev", timeout_s=2.0)
        east = network.endpoints[EAST]
        address = network.address_of(east.host) or ""
        ok = await prober.probe(east, address, "tls")
        assert ok.ok
        assert ok.latency_s == pytest.approx(0.04, abs=1e-5)
        network.admit = lambda region, client_id: "unavailable"
        refused = await prober.probe(east, address, "mqtt")
        assert (refused.ok, refused.kind) == (False, "unavailable")
        assert network.region(EAST).stats.probes == 1
        network.admit = None
        network.set_mode(EAST, "down")
        assert (await prober.probe(east, address, "tcp")).kind == "refused"
        network.set_mode(EAST, "blackhole")
        silent = await prober.probe(east, address, "tls")
        assert silent.kind == "timeout"
        assert silent.latency_s == pytest.approx(2.0, abs=1e-5)
        network.heal(EAST)
        live = Peer(network, EAST, "dev")

        def echo(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            prober.on_message(topic, payload)

        live.transport._callbacks = TransportCallbacks(on_message=echo, on_lost=lambda kind: None)
        await live.transport.connect()
        await live.transport.subscribe("probe/dev", 0)
        assert (await prober.probe(east, address, "roundtrip", live=live.transport)).ok
        assert not prober.on_message("other", b"")

    run_virtual(scenario())


def test_memory_discovery_answers_as_set_and_fails_on_demand() -> None:
    async def scenario() -> None:
        network = MemoryNetwork([EAST, WEST])
        dns = MemoryDiscovery(network)
        found = await dns.discover()
        assert (found.region, found.role, found.target) == (
            EAST,
            "primary",
            network.endpoints[EAST].host,
        )
        dns.cname = WEST
        assert (await dns.discover()).role == "secondary"
        assert await dns.resolve_address(network.endpoints[WEST].host) == ("192.0.2.2",)
        with pytest.raises(DiscoveryError) as unknown:
            await dns.resolve_address("elsewhere.example")
        assert unknown.value.kind == "nxdomain"
        dns.failure = "timeout"
        with pytest.raises(DiscoveryError):
            await dns.discover()
        assert dns.lookups == 3

    run_virtual(scenario())


def test_memory_outbox_keeps_order_and_capacity() -> None:
    outbox = MemoryOutbox(capacity=2, clock=lambda: 5.0)
    first = outbox.put("t", b"1")
    second = outbox.put("t", b"2")
    with pytest.raises(OutboxFullError):
        outbox.put("t", b"3")
    assert [e.seq for e in outbox.peek()] == [first.seq, second.seq]
    assert [e.seq for e in outbox.peek(after_seq=first.seq)] == [second.seq]
    outbox.mark_sent(first.seq)
    assert outbox.peek(1)[0].attempts == 1
    assert outbox.ack(first.seq)
    assert not outbox.ack(first.seq)
    assert outbox.put("t", b"3").seq > second.seq  # seq never reused
    assert outbox.depth == 2
    outbox.close()
    with pytest.raises(Exception, match="closed"):
        outbox.put("t", b"4")
