"""After a region switch the shadow the application gets is the new region's, on both transports.

Against the local regions (doors, brokers, shadow services): each region holds
its own classic shadow document for the device (as the replicator and the
application left them), and the snapshot handed to ``on_shadow`` after each
connect is that region's.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from device_agent._client import FailoverClient
from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    FailoverConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
)
from device_agent._endpoints import Endpoint
from simulators import DEFAULT_REGIONS
from simulators._regions import register_device

if TYPE_CHECKING:
    from device_agent._shadows import ShadowSnapshot
    from simulators._regions import LocalRegions

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = (r.name for r in DEFAULT_REGIONS)


def _config(regions: LocalRegions, name: str, transport: Any) -> AgentConfig:
    endpoints = regions.endpoints()
    assert regions.pki is not None
    device = regions.pki.issue_device(name)
    for region in (PRIMARY, SECONDARY):  # what the replicator does in complete mode
        register_device(endpoints["control_plane_url"], region, device)
    dns_host, dns_port = endpoints["dns"].rsplit(":", 1)
    static = {
        region: Endpoint(region, spec["endpoint"], int(spec["mqtts"].rsplit(":", 1)[1]))
        for region, spec in endpoints["regions"].items()
    }
    return AgentConfig(
        identity=IdentityConfig(
            client_id=name,
            cert_path=device.cert_path,
            key_path=device.key_path,
            ca_path=regions.pki.ca_path,
        ),
        discovery=DiscoveryConfig(
            name=endpoints["device_name"],
            nameservers=(dns_host,),
            port=int(dns_port),
            endpoints=static,
        ),
        failover=FailoverConfig(probe_interval_s=1.0, failback=False),
        mqtt=MQTTConfig(connect_timeout_s=2.0, transport=transport, protocol="5"),
        outbox=OutboxConfig(synchronous="normal"),
    )


def _desire(regions: LocalRegions, region: str, thing: str, color: str) -> None:
    data = boto3.client(
        "iot-data",
        region_name=region,
        endpoint_url=regions.endpoints()["regions"][region]["data_url"],
    )
    payload = json.dumps({"state": {"desired": {"color": color}}})
    data.update_thing_shadow(thingName=thing, payload=payload.encode())


@pytest.mark.parametrize("transport", ["paho", "crt"])
async def test_the_shadow_after_a_switch_is_the_new_regions(
    local_regions: LocalRegions, transport: str
) -> None:
    if not all(r["mqtt5"] for r in local_regions.endpoints()["regions"].values()):
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")
    if transport == "crt":
        pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")
    name = f"shadow-{transport}"
    config = _config(local_regions, name, transport)
    _desire(local_regions, PRIMARY, name, "red")
    _desire(local_regions, SECONDARY, name, "blue")
    snapshots: list[ShadowSnapshot] = []

    async def fetched(region: str) -> ShadowSnapshot:
        async with asyncio.timeout(15):
            while True:
                for snapshot in snapshots:
                    if snapshot.region == region:
                        return snapshot
                await asyncio.sleep(0.05)

    async with FailoverClient(config, on_shadow=snapshots.append):
        first = await fetched(PRIMARY)
        local_regions.set_fault(PRIMARY, "down")
        second = await fetched(SECONDARY)
    assert first.error is None
    assert second.error is None
    assert first.document is not None
    assert second.document is not None
    assert first.document["state"]["desired"] == {"color": "red"}
    assert second.document["state"]["desired"] == {"color": "blue"}
