"""A new certificate's first connect through the door's JITR path, on both transports.

The door registers the unknown certificate (signed by a CA registered with
auto-registration) as PENDING_ACTIVATION and drops the connection; a handler
activates it. The JITR-aware factory keeps retrying the same endpoint within
one connect until the certificate is admitted, and then remembers it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from device_agent._crt import CrtTransportFactory
from device_agent._endpoints import Endpoint
from device_agent._jitr import ConnectedCertificates, JitrAwareFactory
from device_agent._paho import PahoTransport
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    TransportCallbacks,
    TransportFactory,
)
from simulators import FleetPKI
from simulators._regions import attach_device_policy
from tests.integration.test_gateway import WEST, EventWatcher, Regions, plane, regions, until

if TYPE_CHECKING:
    from pathlib import Path

    from simulators import Broker, CertifiedKey

__all__ = ["plane", "regions"]  # the fixtures, imported for pytest

pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mqtt5_brokers(region_brokers: dict[str, Broker]) -> None:
    """MQTT 5 (the CRT's only level) needs mosquitto; amqtt, the fallback, speaks 3.1.1."""
    if not all(broker.mqtt5 for broker in region_brokers.values()):
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")


def _inner(transport: str, regions: Regions, device: CertifiedKey) -> TransportFactory:
    if transport == "crt":
        return CrtTransportFactory(
            cert_path=device.cert_path, key_path=device.key_path, ca_path=regions.fleet.pki.ca_path
        )
    return PahoTransport


@pytest.mark.parametrize("transport", ["paho", "crt"])
async def test_the_first_connect_waits_out_jitr_on_the_same_endpoint(
    regions: Regions, region_brokers: dict[str, Broker], tmp_path: Path, transport: str
) -> None:
    west = regions.gateway(WEST)
    iot = regions.iot(WEST)
    other_ca = FleetPKI.create(tmp_path / "jitr-ca", common_name="iotdr JITR CA")
    device = other_ca.issue_device(f"jitr-{transport}")
    watcher = EventWatcher(region_brokers[WEST.name], "$aws/events/certificates/registered/#")
    iot.register_ca_certificate(
        caCertificate=other_ca.ca_path.read_text(), setAsActive=True, allowAutoRegistration=True
    )
    await until(lambda: west.gateway.view.ca_count == 1, "the gateway learning the CA")

    async def handler() -> None:
        """What a JITR handler does on the registration event."""
        _, event = await watcher.next()
        arn = iot.describe_certificate(certificateId=event["certificateId"])[
            "certificateDescription"
        ]["certificateArn"]
        iot.update_certificate(certificateId=event["certificateId"], newStatus="ACTIVE")
        iot.create_thing(thingName=device.name)
        attach_device_policy(iot, arn)
        iot.attach_thing_principal(thingName=device.name, principal=arn)

    record = ConnectedCertificates(tmp_path / "outbox.db.connected")
    factory = JitrAwareFactory(
        _inner(transport, regions, device),
        fingerprint=device.certificate_id,
        record=record,
        retries=40,
        wait_s=0.25,
    )
    params = ConnectParams(
        endpoint=Endpoint(WEST.name, WEST.endpoint, west.port),
        address=WEST.host,
        client_id=device.name,
        ssl_context=regions.context(device),
        timeout_s=3.0,
        protocol="5",
    )
    received: asyncio.Queue[bytes] = asyncio.Queue()
    callbacks = TransportCallbacks(lambda t, p, q, r: received.put_nowait(p), lambda k: None)
    acting = asyncio.create_task(handler())
    try:
        connection = factory(params, callbacks)
        await connection.connect()
        await acting
        topic = f"t/{device.name}"
        await connection.subscribe(topic, 1)
        await connection.publish(topic, b"registered", 1)
        assert await asyncio.wait_for(received.get(), 5) == b"registered"
        await connection.disconnect()
    finally:
        acting.cancel()
        watcher.probe.close()
    # The first attempt was JITR's drop, then the pending certificate's refusals.
    assert connection.attempts >= 2  # type: ignore[attr-defined]
    assert west.status()["jitr_registrations"] == 1
    assert device.certificate_id in ConnectedCertificates(tmp_path / "outbox.db.connected")


async def test_a_known_certificate_refused_is_reported_at_once(
    regions: Regions, tmp_path: Path
) -> None:
    west = regions.gateway(WEST)
    stranger = FleetPKI.create(tmp_path / "unregistered").issue_device("stranger")
    record = ConnectedCertificates(None)
    record.add(stranger.certificate_id)  # it connected once, somewhere: no JITR to wait for
    factory = JitrAwareFactory(
        PahoTransport, fingerprint=stranger.certificate_id, record=record, retries=40, wait_s=0.25
    )
    params = ConnectParams(
        endpoint=Endpoint(WEST.name, WEST.endpoint, west.port),
        address=WEST.host,
        client_id=stranger.name,
        ssl_context=regions.context(stranger),
        timeout_s=3.0,
    )
    connection = factory(params, TransportCallbacks(lambda *a: None, lambda k: None))
    with pytest.raises(ConnectError):
        await connection.connect()
    assert connection.attempts == 1  # type: ignore[attr-defined]
