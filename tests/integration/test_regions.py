"""The local regions as a whole: boto3 iot and iot-data against them, isolation, events, faults."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest
from botocore.config import Config
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    from simulators._regions import LocalRegions

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = "us-east-1", "us-west-2"
_NO_RETRIES = Config(
    retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5
)


def _client(service: str, region: str, url: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=_NO_RETRIES,
    )


def test_endpoints_describe_every_part(local_regions: LocalRegions) -> None:
    endpoints = local_regions.endpoints()
    assert set(endpoints["regions"]) == {PRIMARY, SECONDARY}
    primary = endpoints["regions"][PRIMARY]
    assert primary["role"] == "primary"
    assert primary["mqtts"].startswith("127.0.0.2:")
    assert primary["data_url"].startswith("http://127.0.0.2:")
    assert endpoints["regions"][SECONDARY]["mqtts"].startswith("127.0.0.3:")
    assert endpoints["control_plane_url"].startswith("http://127.0.0.1:")
    assert endpoints["dns"].startswith("127.0.0.1:")


def test_iot_and_iot_data_per_region_are_isolated(local_regions: LocalRegions) -> None:
    url = local_regions.endpoints()["control_plane_url"]
    east, west = _client("iot", PRIMARY, url), _client("iot", SECONDARY, url)
    east.create_thing(thingName="lamp-1", attributePayload={"attributes": {"room": "hall"}})
    assert east.describe_thing(thingName="lamp-1")["attributes"] == {"room": "hall"}
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing(thingName="lamp-1")
    data_east = _client("iot-data", PRIMARY, local_regions.shadows(PRIMARY).url)
    data_west = _client("iot-data", SECONDARY, local_regions.shadows(SECONDARY).url)
    data_east.update_thing_shadow(
        thingName="lamp-1", payload=json.dumps({"state": {"reported": {"on": True}}}).encode()
    )
    shadow = json.loads(data_east.get_thing_shadow(thingName="lamp-1")["payload"].read())
    assert shadow["state"]["reported"] == {"on": True}
    with pytest.raises(data_west.exceptions.ResourceNotFoundException):
        data_west.get_thing_shadow(thingName="lamp-1")


def test_registry_events_arrive_on_the_region_broker(local_regions: LocalRegions) -> None:
    broker = local_regions.broker(PRIMARY)
    received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="events-watcher")
    watcher.on_message = lambda c, u, m: received.put((m.topic, json.loads(m.payload)))
    subscribed = queue.Queue[bool]()
    watcher.on_subscribe = lambda *a: subscribed.put(True)
    watcher.connect(broker.host, broker.port)
    watcher.subscribe("$aws/events/#", qos=1)
    watcher.loop_start()
    try:
        subscribed.get(timeout=10)
        iot = _client("iot", PRIMARY, local_regions.endpoints()["control_plane_url"])
        iot.create_thing(thingName="sensor-7")
        topic, event = received.get(timeout=10)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert topic == "$aws/events/thing/sensor-7/created"
    assert event["eventType"] == "THING_EVENT"
    assert event["operation"] == "CREATED"
    assert event["thingName"] == "sensor-7"


def test_control_plane_outage_is_seen_by_boto3(local_regions: LocalRegions) -> None:
    url = local_regions.endpoints()["control_plane_url"]
    east, west = _client("iot", PRIMARY, url), _client("iot", SECONDARY, url)
    local_regions.set_control_plane(PRIMARY, "http503")
    try:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            east.list_things()
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "things" in west.list_things()  # the other region is unaffected
    finally:
        local_regions.set_control_plane(PRIMARY, "up")
    assert "things" in east.list_things()


def test_regions_up_status_fault_commands(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim", "regions",
         "up", "--state-dir", str(state), "--mqtt-port", "0", "--mqtts-port", "0",
         "--data-port", "0", "--control-plane-port", "0", "--dns-port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        endpoints = json.loads(process.stdout.readline())
        assert (state / "regions.json").exists()
        status = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "regions", "status",
             "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        reported = json.loads(status.stdout)
        health = reported["health"]
        assert health["cname"] == "local-ats.iot.us-east-1.iotdr.test"
        assert reported["health_checker"]["serving"] == PRIMARY
        assert health["regions"][PRIMARY] == {
            "mqtt": True, "mqtts": True, "data": True, "broker_pid_alive": True,
        }  # fmt: skip
        faulted = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "fault", PRIMARY,
             "control-plane-down", "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert faulted.returncode == 0, faulted.stderr
        iot = _client("iot", PRIMARY, endpoints["control_plane_url"])
        with pytest.raises(botocore.exceptions.ClientError):
            iot.list_things()
        door = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "fault", PRIMARY, "blackhole",
             "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert door.returncode == 0, door.stderr
        after = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "regions", "status",
             "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert json.loads(after.stdout)["regions"][PRIMARY]["gateway"]["fault"]["mode"] == (
            "blackhole"
        )
        bad = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "fault", PRIMARY, "sideways",
             "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert bad.returncode == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    assert not (state / "regions.json").exists()
    deadline = time.monotonic() + 5
    pids = [r["broker_pid"] for r in endpoints["regions"].values()]
    pids.append(endpoints["control_plane_pid"])
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_status_without_running_regions_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "regions", "status", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "iotdr sim regions up" in err[0]


async def test_a_device_moves_through_the_doors_when_its_region_fails(
    local_regions: LocalRegions,
) -> None:
    from device_agent import (
        AgentConfig,
        AgentEvent,
        DiscoveryConfig,
        Endpoint,
        FailoverClient,
        FailoverConfig,
        IdentityConfig,
        MQTTConfig,
        OutboxConfig,
    )
    from simulators._regions import register_device

    endpoints = local_regions.endpoints()
    assert local_regions.pki is not None
    device = local_regions.pki.issue_device("door-walker")
    for region in (PRIMARY, SECONDARY):  # what the replicator does in complete mode
        register_device(endpoints["control_plane_url"], region, device)
    dns_host, dns_port = endpoints["dns"].rsplit(":", 1)
    # Free ports differ per region here (with `regions up`'s defaults both are 8883).
    static = {
        name: Endpoint(name, region["endpoint"], int(region["mqtts"].rsplit(":", 1)[1]))
        for name, region in endpoints["regions"].items()
    }
    config = AgentConfig(
        identity=IdentityConfig(
            client_id=device.name,
            cert_path=device.cert_path,
            key_path=device.key_path,
            ca_path=local_regions.pki.ca_path,
        ),
        discovery=DiscoveryConfig(
            name=endpoints["device_name"],
            nameservers=(dns_host,),
            port=int(dns_port),
            endpoints=static,
        ),
        failover=FailoverConfig(
            stability_window_s=1.0, failback_probe_interval_s=0.5, failback_spread_s=0.0
        ),
        mqtt=MQTTConfig(connect_timeout_s=2.0),
        outbox=OutboxConfig(synchronous="normal"),
    )
    seen: list[AgentEvent] = []
    async with FailoverClient(config, on_event=seen.append) as client:
        await client.wait_connected(10)
        assert client.status().region == PRIMARY
        local_regions.set_fault(PRIMARY, "down")
        for _ in range(200):
            if client.status().region == SECONDARY:
                break
            await asyncio.sleep(0.05)
        assert client.status().region == SECONDARY
        seq = await client.publish(f"dt/{device.name}", {"n": 1})
        assert seq is not None
        await client.wait_acked(seq, 10)
        local_regions.set_fault(PRIMARY, "up")
        for _ in range(200):
            if client.status().region == PRIMARY:
                break
            await asyncio.sleep(0.05)
        assert client.status().region == PRIMARY
    names = [e.name for e in seen]
    assert "failover.complete" in names
    assert "failback.complete" in names
    admitted = local_regions.gateway(SECONDARY).status()["admitted"]
    assert admitted >= 1


async def test_tls_depth_probes_of_a_healthy_door_pass(local_regions: LocalRegions) -> None:
    """The agent's default failback probe: a TLS handshake, then close_notify at once."""
    import ssl

    from device_agent import Endpoint, PahoTransport, Prober

    assert local_regions.pki is not None
    region = local_regions.endpoints()["regions"][PRIMARY]
    device = local_regions.pki.issue_device("tls-prober")
    context = ssl.create_default_context(cafile=str(local_regions.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    prober = Prober(
        client_id=device.name,
        ssl_context=context,
        transport_factory=PahoTransport,
        timeout_s=2.0,
        topic="unused",
    )
    host, port = region["mqtts"].rsplit(":", 1)
    endpoint = Endpoint(PRIMARY, region["endpoint"], int(port))
    outcomes = [await prober.probe(endpoint, host, "tls") for _ in range(10)]
    assert [o.kind for o in outcomes if not o.ok] == []
