"""The AWS Common Runtime transport on loopback: the agent's address, the endpoint's name.

The CRT client is given the endpoint's name and reaches the address the
agent resolved through its local tunnel; these tests check that TLS really
verifies that name (a wrong one fails), that SNI is sent, that the CRT never
reconnects by itself, and that messages round-trip over MQTT 5.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import threading
from typing import TYPE_CHECKING

import pytest

from device_agent._crt import CrtTransport, CrtTransportFactory
from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    Transport,
    TransportCallbacks,
    TransportClosedError,
)
from simulators import DEFAULT_REGIONS, FleetPKI
from tests.integration.agent_env import Regions, regions

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators import Broker
    from simulators.pytest_plugin import FleetFixture

__all__ = ["regions"]  # the fixture, imported for pytest

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mqtt5_brokers(region_brokers: dict[str, Broker]) -> None:
    """MQTT 5 (the CRT's only level) needs mosquitto; amqtt, the fallback, speaks 3.1.1."""
    if not all(broker.mqtt5 for broker in region_brokers.values()):
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")


REGION = DEFAULT_REGIONS[0]


def _factory(fleet: FleetFixture, name: str) -> CrtTransportFactory:
    device = fleet.pki.issue_device(name)
    return CrtTransportFactory(
        cert_path=device.cert_path, key_path=device.key_path, ca_path=fleet.pki.ca_path
    )


def _params(
    port: int,
    *,
    host: str = REGION.endpoint,
    address: str = REGION.host,
    client_id: str = "crt-test",
    timeout_s: float = 2.0,
) -> ConnectParams:
    return ConnectParams(
        endpoint=Endpoint(REGION.name, host, port),
        address=address,
        client_id=client_id,
        ssl_context=ssl.create_default_context(),  # unused by the CRT
        timeout_s=timeout_s,
        protocol="5",
    )


def _quiet() -> TransportCallbacks:
    return TransportCallbacks(lambda *a: None, lambda kind: None)


@pytest.fixture
def sni_server(fleet_pki: FleetFixture) -> Iterator[tuple[int, list[str | None]]]:
    """A TLS server on 127.0.0.1 that records the SNI of each handshake, then hangs up."""
    seen: list[str | None] = []
    server_cert = fleet_pki.servers[REGION.name]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_cert.cert_path), str(server_cert.key_path))
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    stop.set()
    listener.close()
    thread.join(5)


async def test_connects_publishes_and_receives_over_mqtt5(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    received: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    transport = CrtTransport(
        _params(broker.tls_port, client_id="crt-round-trip"),
        TransportCallbacks(lambda t, p, q, r: received.put_nowait((t, p, q)), lambda k: None),
        factory=_factory(fleet_pki, "crt-round-trip"),
    )
    assert await transport.connect() is False
    assert transport.connected
    assert await transport.subscribe("t/crt-round-trip", 1) == 1
    for n in range(50):
        await transport.publish("t/crt-round-trip", str(n).encode(), 1)
    got = [await asyncio.wait_for(received.get(), 5) for _ in range(50)]
    assert [int(p) for _, p, _ in got] == list(range(50))
    assert {(t, q) for t, _, q in got} == {("t/crt-round-trip", 1)}
    await transport.disconnect()
    assert not transport.connected


async def test_the_sni_is_the_endpoint_name_while_the_socket_goes_to_the_address(
    fleet_pki: FleetFixture, sni_server: tuple[int, list[str | None]]
) -> None:
    port, seen = sni_server
    transport = CrtTransport(
        _params(port, address="127.0.0.1"), _quiet(), factory=_factory(fleet_pki, "crt-sni")
    )
    with pytest.raises(ConnectError):
        await transport.connect()  # the server hangs up after the handshake
    assert seen == [REGION.endpoint]  # one handshake: the CRT did not reconnect by itself


async def test_a_wrong_server_name_fails_verification(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    # The other region's name: a real name of the fleet, not on this server's certificate.
    params = _params(broker.tls_port, host=DEFAULT_REGIONS[1].endpoint)
    transport = CrtTransport(params, _quiet(), factory=_factory(fleet_pki, "crt-wrong-name"))
    with pytest.raises(ConnectError) as info:
        await transport.connect()
    assert info.value.kind == "tls"
    assert DEFAULT_REGIONS[1].endpoint in str(info.value)
    assert not transport.connected


async def test_a_port_where_nothing_listens_is_refused_at_once(fleet_pki: FleetFixture) -> None:
    with socket.socket() as probe:
        probe.bind((REGION.host, 0))
        free = probe.getsockname()[1]
    transport = CrtTransport(
        _params(free, timeout_s=30.0), _quiet(), factory=_factory(fleet_pki, "crt-refused")
    )
    task = asyncio.create_task(transport.connect())
    done, _ = await asyncio.wait({task}, timeout=10)  # well before the 30 s deadline
    assert task in done
    with pytest.raises(ConnectError) as info:
        task.result()
    assert info.value.kind == "refused"
    assert info.value.region == REGION.name


async def test_a_silent_listener_times_out_on_our_deadline(fleet_pki: FleetFixture) -> None:
    silent = socket.create_server((REGION.host, 0))  # accepts in the kernel, never answers
    try:
        transport = CrtTransport(
            _params(silent.getsockname()[1], timeout_s=1.0),
            _quiet(),
            factory=_factory(fleet_pki, "crt-silent"),
        )
        with pytest.raises(ConnectError) as info:
            await transport.connect()
    finally:
        silent.close()
    assert info.value.kind == "timeout"


async def test_a_foreign_client_certificate_is_refused(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture, tmp_path: Path
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    stranger = FleetPKI.create(tmp_path / "foreign").issue_device("stranger")
    factory = CrtTransportFactory(
        cert_path=stranger.cert_path, key_path=stranger.key_path, ca_path=fleet_pki.pki.ca_path
    )
    transport = CrtTransport(_params(broker.tls_port), _quiet(), factory=factory)
    with pytest.raises(ConnectError) as info:
        await transport.connect()
    assert info.value.kind == "not_authorized"
    assert not transport.connected


async def test_tls_contexts_are_shared_per_identity_and_alpn(fleet_pki: FleetFixture) -> None:
    factory = _factory(fleet_pki, "crt-shared")
    assert factory.tls_context(()) is factory.tls_context(())
    assert factory.tls_context(("x-amzn-mqtt-ca",)) is not factory.tls_context(())


@pytest.mark.parametrize("kind", ["paho", "crt"])
async def test_a_raising_message_callback_never_breaks_the_connection(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture, kind: str
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    received: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        received.put_nowait(payload)
        if payload == b"bad":
            msg = "the application's bug"
            raise ValueError(msg)

    name = f"raising-{kind}"
    params = _params(broker.tls_port, client_id=name)
    callbacks = TransportCallbacks(on_message, lambda k: None)
    factory = _factory(fleet_pki, name)
    transport: Transport
    if kind == "crt":
        transport = CrtTransport(params, callbacks, factory=factory)
    else:
        device = fleet_pki.pki.issue_device(name)
        context = ssl.create_default_context(cafile=str(fleet_pki.pki.ca_path))
        context.load_cert_chain(str(device.cert_path), str(device.key_path))
        transport = PahoTransport(dataclasses.replace(params, ssl_context=context), callbacks)
    await transport.connect()
    await transport.subscribe(f"t/{name}", 1)
    await transport.publish(f"t/{name}", b"bad", 1)
    await transport.publish(f"t/{name}", b"good", 1)
    got = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
    assert got == [b"bad", b"good"]
    assert transport.connected
    await transport.disconnect()


async def test_a_lost_connection_fails_what_waits_and_reports_once(
    regions: Regions, fleet_pki: FleetFixture
) -> None:
    proxy = regions.proxies[REGION.name]
    lost: asyncio.Queue[str] = asyncio.Queue()
    transport = CrtTransport(
        _params(proxy.port, client_id="crt-lost"),
        TransportCallbacks(lambda *a: None, lost.put_nowait),
        factory=_factory(fleet_pki, "crt-lost"),
    )
    await transport.connect()
    proxy.set_mode("blackhole")  # the PUBACK never comes...
    waiting = asyncio.create_task(transport.publish("t/crt-lost", b"x", 1))
    await asyncio.sleep(0.2)
    proxy.set_mode("down")  # ...and then the connection is reset
    with pytest.raises(TransportClosedError):
        await asyncio.wait_for(waiting, 10)
    assert await asyncio.wait_for(lost.get(), 5) == "closed"
    assert not transport.connected
    await transport.disconnect()
    assert lost.empty()  # once
