"""Port 443 and custom domains on both transports, against the region's door on 127.0.0.x.

The door's 443-style listener admits MQTT only to clients that ask for ALPN
``x-amzn-mqtt-ca``, as AWS IoT's 443 does; a custom domain's name is the
one TLS verifies (and sends as SNI), not the host the device resolved; a
wrong name fails on both transports.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from device_agent._crt import CrtTransportFactory
from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    Transport,
    TransportCallbacks,
    TransportFactory,
)
from tests.integration.test_gateway import EAST, Regions, plane, regions, until

if TYPE_CHECKING:
    from simulators import Broker, CertifiedKey
    from simulators.gateway import ThreadedRegionGateway

__all__ = ["plane", "regions"]  # the fixtures, imported for pytest

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mqtt5_brokers(region_brokers: dict[str, Broker]) -> None:
    """MQTT 5 (the CRT's only level) needs mosquitto; amqtt, the fallback, speaks 3.1.1."""
    if not all(broker.mqtt5 for broker in region_brokers.values()):
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")


TRANSPORTS = ["paho", "crt"]
ALPN = ("x-amzn-mqtt-ca",)


def _factory(transport: str, regions: Regions, device: CertifiedKey) -> TransportFactory:
    if transport == "crt":
        return CrtTransportFactory(
            cert_path=device.cert_path, key_path=device.key_path, ca_path=regions.fleet.pki.ca_path
        )
    return PahoTransport


async def _connect(
    transport: str,
    regions: Regions,
    device: CertifiedKey,
    endpoint: Endpoint,
    received: asyncio.Queue[bytes] | None = None,
) -> Transport:
    params = ConnectParams(
        endpoint=endpoint,
        address=EAST.host,
        client_id=device.name,
        ssl_context=regions.context(device),
        timeout_s=3.0,
        protocol="5",
    )

    def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        del topic, qos, retain
        if received is not None:
            received.put_nowait(payload)

    connection = _factory(transport, regions, device)(
        params, TransportCallbacks(on_message, lambda kind: None)
    )
    await connection.connect()
    return connection


async def _door(regions: Regions, name: str) -> tuple[ThreadedRegionGateway, CertifiedKey]:
    door = regions.gateway(EAST, alpn_port=0)
    device = regions.device(name)
    await regions.settle(door, regions.register(EAST, device), "ACTIVE")
    return door, device


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_443_listener_admits_mqtt_by_alpn_under_a_custom_domain(
    regions: Regions, transport: str
) -> None:
    door, device = await _door(regions, f"alpn-{transport}")
    assert door.alpn_port is not None
    received: asyncio.Queue[bytes] = asyncio.Queue()
    # Through a custom domain: the host is a CNAME the device resolved (to EAST.host),
    # the name verified and sent as SNI is the domain's, which the certificate covers.
    endpoint = Endpoint(
        EAST.name, "d-123.cname.example", door.alpn_port, server_name=EAST.endpoint, alpn=ALPN
    )
    connection = await _connect(transport, regions, device, endpoint, received)
    try:
        topic = f"t/{device.name}"
        assert await connection.subscribe(topic, 1) == 1
        await connection.publish(topic, b"over 443", 1)
        assert await asyncio.wait_for(received.get(), 5) == b"over 443"
    finally:
        await connection.disconnect()
    assert door.gateway.refused["tls_no_alpn"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_443_listener_closes_a_handshake_without_alpn(
    regions: Regions, transport: str
) -> None:
    door, device = await _door(regions, f"no-alpn-{transport}")
    assert door.alpn_port is not None
    endpoint = Endpoint(EAST.name, EAST.endpoint, door.alpn_port, alpn=())
    with pytest.raises(ConnectError) as caught:
        await _connect(transport, regions, device, endpoint)
    assert caught.value.kind in ("closed", "not_authorized")  # how each client sees a close
    await until(lambda: door.gateway.refused["tls_no_alpn"] == 1, "the door counting tls_no_alpn")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_alpn_on_the_8883_listener_does_no_harm(regions: Regions, transport: str) -> None:
    door, device = await _door(regions, f"alpn-8883-{transport}")
    endpoint = Endpoint(EAST.name, EAST.endpoint, door.port, alpn=ALPN)
    connection = await _connect(transport, regions, device, endpoint)
    assert connection.connected
    await connection.disconnect()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_wrong_server_name_fails_on_both_transports(
    regions: Regions, transport: str
) -> None:
    door, device = await _door(regions, f"wrong-{transport}")
    endpoint = Endpoint(EAST.name, EAST.endpoint, door.port, server_name="iot.example.com")
    with pytest.raises(ConnectError) as caught:
        await _connect(transport, regions, device, endpoint)
    assert caught.value.kind == "tls"
    assert door.gateway.admitted == 0
