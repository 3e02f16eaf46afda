"""The paho transport and the prober: the bound source address, the throttled CONNACK.

The source address is checked against a plain TCP listener on loopback that
records who connected (127.0.0.2 is a loopback address on Linux: no setup);
the throttled CONNACK against a TLS listener that answers as AWS IoT does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._probe import Prober
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from simulators import DEFAULT_REGIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from device_agent._events import ProbeDepth
    from device_agent._transport import MQTTProtocol
    from simulators.pytest_plugin import FleetFixture

SOURCE = "127.0.0.2"


class Listener:
    """A TCP listener on 127.0.0.1 that records each peer's address and hangs up."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader
        self.peers.append(writer.get_extra_info("peername")[0])
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    server = Listener()
    server.server = await asyncio.start_server(server._accept, "127.0.0.1", 0)
    async with server.server:
        yield server


def _params(port: int, source: str | None) -> ConnectParams:
    return ConnectParams(
        endpoint=Endpoint("us-east-1", "localhost", port),
        address="127.0.0.1",
        client_id="source-test",
        ssl_context=ssl.create_default_context(),
        timeout_s=2.0,
        source_address=source,
    )


def _callbacks() -> TransportCallbacks:
    return TransportCallbacks(lambda *a: None, lambda kind: None)


@pytest.mark.parametrize(("source", "seen"), [(SOURCE, SOURCE), (None, "127.0.0.1")])
async def test_the_paho_transport_binds_its_socket_to_the_source_address(
    listener: Listener, source: str | None, seen: str
) -> None:
    transport = PahoTransport(_params(listener.port, source), _callbacks())
    with pytest.raises(ConnectError):  # the listener hangs up during TLS
        await transport.connect()
    assert listener.peers == [seen]


async def test_a_source_address_that_cannot_be_bound_is_a_connect_error(
    listener: Listener,
) -> None:
    transport = PahoTransport(_params(listener.port, "192.0.2.1"), _callbacks())
    with pytest.raises(ConnectError) as caught:
        await transport.connect()
    assert caught.value.kind == "unreachable"
    assert listener.peers == []


@pytest.mark.parametrize("depth", ["tcp", "tls", "mqtt"])
async def test_every_probe_binds_to_the_source_address(
    listener: Listener, depth: ProbeDepth
) -> None:
    prober = Prober(
        client_id="source-test",
        ssl_context=ssl.create_default_context(),
        transport_factory=PahoTransport,
        timeout_s=2.0,
        topic="iotdr/probe/source-test",
        source_address=SOURCE,
    )
    endpoint = Endpoint("us-east-1", "localhost", listener.port)
    outcome = await prober.probe(endpoint, "127.0.0.1", depth)
    assert outcome.ok is (depth == "tcp")
    for _ in range(50):  # the listener's callback runs on the next turns of the loop
        if listener.peers:
            break
        await asyncio.sleep(0.01)
    assert listener.peers == [SOURCE]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0x97, "throttled"),  # quota exceeded: AWS IoT's CONNECT throttling
        (0x89, "throttled"),  # server busy
        (0x88, "unavailable"),  # server unavailable
        (0x87, "not_authorized"),
        (0x8A, "not_authorized"),  # banned
    ],
)
async def test_a_refusing_connack_maps_to_its_kind(code: int, kind: str) -> None:
    transport = PahoTransport(_params(8883, None), _callbacks())
    reason = ReasonCode(PacketTypes.CONNACK, identifier=code)
    transport._on_connect(transport._client, None, None, reason, None)  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as caught:
        await transport._connack
    assert caught.value.kind == kind


# -- a throttling door over TLS: what paho makes of its answer, per MQTT level ----------------


class ThrottlingDoor:
    """A TLS listener that answers every CONNECT as AWS IoT does when throttling.

    MQTT 5: CONNACK 0x97 (quota exceeded), then the close; MQTT 3.1.1: the
    close without a CONNACK (3.1.1 has no code for it).
    """

    def __init__(self) -> None:
        self.levels: list[int] = []
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(256)
            start = data.find(b"MQTT")
            level = data[start + 4] if start >= 0 and len(data) > start + 4 else 0
            self.levels.append(level)
            if level == 5:
                writer.write(bytes((0x20, 0x03, 0x00, 0x97, 0x00)))
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def door(fleet_pki: FleetFixture) -> AsyncIterator[tuple[ThrottlingDoor, ssl.SSLContext]]:
    region = DEFAULT_REGIONS[0]
    server_cert = fleet_pki.servers[region.name]
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(server_cert.cert_path), str(server_cert.key_path))
    device = fleet_pki.pki.issue_device("throttled-device")
    client_context = ssl.create_default_context(cafile=str(fleet_pki.pki.ca_path))
    client_context.load_cert_chain(str(device.cert_path), str(device.key_path))
    throttling = ThrottlingDoor()
    throttling.server = await asyncio.start_server(
        throttling._accept, "127.0.0.1", 0, ssl=server_context
    )
    async with throttling.server:
        yield throttling, client_context


@pytest.mark.parametrize(
    ("protocol", "kind", "level"), [("5", "throttled", 5), ("3.1.1", "closed", 4)]
)
async def test_a_throttled_connect_is_told_apart_only_over_mqtt_5(
    door: tuple[ThrottlingDoor, ssl.SSLContext], protocol: MQTTProtocol, kind: str, level: int
) -> None:
    throttling, context = door
    assert throttling.server is not None
    port = int(throttling.server.sockets[0].getsockname()[1])
    params = ConnectParams(
        endpoint=Endpoint("us-east-1", DEFAULT_REGIONS[0].endpoint, port),
        address="127.0.0.1",
        client_id="throttled-device",
        ssl_context=context,
        timeout_s=5.0,
        protocol=protocol,
    )
    transport = PahoTransport(params, _callbacks())
    with pytest.raises(ConnectError) as caught:
        await transport.connect()
    assert caught.value.kind == kind
    assert throttling.levels == [level]


def test_a_source_address_leaves_the_port_to_connect() -> None:
    """bind_source takes no port at bind time (IP_BIND_ADDRESS_NO_PORT): the port is chosen
    at connect(), unique per destination, and a port in TIME_WAIT does not block it."""
    from device_agent._tls import bind_source

    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as sock:
        bind_source(sock, "127.0.0.5")
        assert sock.getsockname() == ("127.0.0.5", 0)
        sock.connect(listener.getsockname())
        address, port = sock.getsockname()
        assert address == "127.0.0.5"
        assert port != 0
