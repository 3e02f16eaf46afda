"""Provisioning a simulated fleet in the local regions: bulk steady state, then devices the AWS way.

A fleet provisioned in bulk must be registered in both regions (certificate
ACTIVE, a thing of the device's name, the attachment) without a single
registry event (the replicator would have nothing to copy), and each
region's door must admit it. A device created during a run goes through the
AWS APIs in the primary: events published, admitted there only.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
import stat
import time
from typing import TYPE_CHECKING

import boto3
import pytest

from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from simulators import DEFAULT_REGIONS
from simulators.fleet._provision import (
    fleet_device_names,
    provision_fleet,
    register_new_devices,
)
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_iot import IoTClient

    from simulators import Broker, CertifiedKey
    from simulators._regions import LocalRegions

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = (r.name for r in DEFAULT_REGIONS)
DEVICES = 300
WAIT_S = 10.0


class EventWatcher:
    """Every message under ``$aws/events/#`` on a region's broker, from subscription on."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.probe = ProbeClient(f"watcher-{name}")
        self.granted: queue.Queue[int] = queue.Queue()
        self.probe.client.on_subscribe = lambda *args: self.granted.put(1)
        assert self.probe.connect(broker.host, broker.port), self.probe.reason
        self.probe.client.subscribe("$aws/events/#", qos=1)
        self.granted.get(timeout=WAIT_S)

    def until(self, topic: str) -> list[tuple[str, bytes]]:
        """The messages received up to and including the first on ``topic``."""
        seen: list[tuple[str, bytes]] = []
        while not seen or seen[-1][0] != topic:
            seen.append(self.probe.messages.get(timeout=WAIT_S))
        return seen

    def close(self) -> None:
        self.probe.close()


@pytest.fixture
def watchers(local_regions: LocalRegions) -> Iterator[dict[str, EventWatcher]]:
    started = {r.name: EventWatcher(local_regions.broker(r.name), r.name) for r in DEFAULT_REGIONS}
    try:
        yield started
    finally:
        for watcher in started.values():
            watcher.close()


def iot(regions: LocalRegions, region: str) -> IoTClient:
    assert regions.control_plane is not None
    client: IoTClient = boto3.client(
        "iot", region_name=region, endpoint_url=regions.control_plane.url
    )
    return client


def thing_names(regions: LocalRegions, region: str) -> set[str]:
    return {t["thingName"] for t in iot(regions, region).list_things()["things"]}


def admitted(regions: LocalRegions, region: str, device: CertifiedKey) -> bool:
    """Whether ``region``'s door lets ``device`` in: an mTLS MQTT CONNECT through it.

    The device's own transport, with SNI for the region's endpoint name (the door
    drops a certificate registered without a CA that comes without SNI, as AWS does).
    """
    assert regions.pki is not None
    gateway = regions.gateway(region)
    spec = next(r for r in DEFAULT_REGIONS if r.name == region)
    context = ssl.create_default_context(cafile=str(regions.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    params = ConnectParams(
        endpoint=Endpoint(region, spec.endpoint, gateway.port),
        address=spec.host,
        client_id=device.name,
        ssl_context=context,
        timeout_s=5.0,
    )

    async def attempt() -> bool:
        transport = PahoTransport(params, TransportCallbacks(lambda *a: None, lambda kind: None))
        try:
            await transport.connect()
        except ConnectError:
            return False
        await transport.disconnect()
        return True

    return asyncio.run(attempt())


def test_a_fleet_is_registered_in_both_regions_without_events_and_admitted(
    local_regions: LocalRegions, watchers: dict[str, EventWatcher]
) -> None:
    names = fleet_device_names(DEVICES)
    devices = provision_fleet(local_regions, names)

    assert [d.name for d in devices] == names
    assert names[0] == "sim-00001"
    assert len({d.certificate_id for d in devices}) == DEVICES
    assert all(stat.S_IMODE(d.key_path.stat().st_mode) == 0o600 for d in devices)
    sample = [*devices[::50], devices[-1]]
    for region in (PRIMARY, SECONDARY):
        client = iot(local_regions, region)
        for device in sample:
            found = client.describe_certificate(certificateId=device.certificate_id)
            description = found["certificateDescription"]
            assert description["status"] == "ACTIVE", (region, device.name)
            assert client.describe_thing(thingName=device.name)["thingName"] == device.name
            principals = client.list_thing_principals(thingName=device.name)["principals"]
            assert principals == [description["certificateArn"]], (region, device.name)

    # No registry event for the fleet: a thing created through the API afterwards is the
    # barrier (a region's events keep the order of its calls), and nothing came before it.
    for region, watcher in watchers.items():
        iot(local_regions, region).create_thing(thingName=f"barrier-{region}")
        seen = watcher.until(f"$aws/events/thing/barrier-{region}/created")
        assert seen[:-1] == [], f"{region} published events for the bulk registration: {seen}"

    assert admitted(local_regions, PRIMARY, devices[0])
    assert admitted(local_regions, SECONDARY, devices[-1])


def test_provisioning_again_changes_nothing_and_a_region_can_be_left_out(
    local_regions: LocalRegions,
) -> None:
    names = fleet_device_names(3, start=900)
    devices = provision_fleet(local_regions, names, register_in=[PRIMARY])
    again = local_regions.register_fleet(devices, [PRIMARY])

    assert again[PRIMARY].devices == 3
    assert again[PRIMARY].certificates_created == 0
    assert again[PRIMARY].things_created == 0
    assert admitted(local_regions, PRIMARY, devices[0])
    assert not admitted(local_regions, SECONDARY, devices[0])
    assert not thing_names(local_regions, SECONDARY) & set(names)


def test_a_device_created_during_a_run_goes_through_the_api_in_the_primary(
    local_regions: LocalRegions, watchers: dict[str, EventWatcher]
) -> None:
    [device] = register_new_devices(local_regions, ["sim-late-00001"])

    seen = watchers[PRIMARY].until("$aws/events/thing/sim-late-00001/created")
    assert seen[-1][0] == "$aws/events/thing/sim-late-00001/created"
    client = iot(local_regions, PRIMARY)
    described = client.describe_certificate(certificateId=device.certificate_id)
    assert described["certificateDescription"]["status"] == "ACTIVE"
    assert client.list_thing_principals(thingName=device.name)["principals"]
    assert door_sees(local_regions, PRIMARY, device)
    assert admitted(local_regions, PRIMARY, device)
    assert device.name not in thing_names(local_regions, SECONDARY)  # no replicator here
    assert not admitted(local_regions, SECONDARY, device)


def door_sees(regions: LocalRegions, region: str, device: CertifiedKey) -> bool:
    """Wait until ``region``'s door has ``device``'s certificate attached to its thing.

    The door follows the registry through a long-polled change feed: a change
    made through the API reaches it a moment later.
    """
    view = regions.gateway(region).gateway.view
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        record = view.certificate(device.certificate_id)
        if record is not None and device.name in record.things:
            return True
        time.sleep(0.05)
    return False
