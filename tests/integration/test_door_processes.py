"""The door as processes of its own (``LocalRegions(door_processes=N)``): one port, N children."""

from __future__ import annotations

import os
import queue
import ssl
import time
from typing import TYPE_CHECKING

import pytest

from device_agent import Endpoint, PahoTransport, Prober
from simulators._errors import SimulatorError
from simulators._regions import LocalRegions
from simulators.gateway import GatewayProcesses
from simulators.gateway._process import config_from_json, config_to_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators._pki import CertifiedKey

pytestmark = pytest.mark.integration

PRIMARY = "us-east-1"


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegions]:
    with LocalRegions(
        state_dir=tmp_path_factory.mktemp("door-processes"), door_processes=2, health=None
    ) as running:
        yield running


@pytest.fixture(scope="module")
def device(regions: LocalRegions) -> CertifiedKey:
    assert regions.pki is not None
    device = regions.pki.issue_device("door-process-device")
    regions.register_fleet([device])  # returns once every child of each door admits it
    return device


def _prober(regions: LocalRegions, device: CertifiedKey) -> tuple[Prober, Endpoint, str]:
    assert regions.pki is not None
    context = ssl.create_default_context(cafile=str(regions.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    prober = Prober(
        client_id=device.name,
        ssl_context=context,
        transport_factory=PahoTransport,
        timeout_s=3.0,
        topic="unused",
    )
    region = regions.endpoints()["regions"][PRIMARY]
    host, port = region["mqtts"].rsplit(":", 1)
    return prober, Endpoint(PRIMARY, region["endpoint"], int(port)), host


async def test_children_share_the_port_and_their_counters_add_up(
    regions: LocalRegions, device: CertifiedKey
) -> None:
    door = regions.door(PRIMARY)
    assert isinstance(door, GatewayProcesses)
    assert len(set(door.admin_urls)) == 2
    before = door.status()
    prober, endpoint, host = _prober(regions, device)
    outcomes = [await prober.probe(endpoint, host, "tls") for _ in range(12)]
    assert [o.kind for o in outcomes if not o.ok] == []
    mqtt = await prober.probe(endpoint, host, "mqtt")
    assert mqtt.ok, mqtt
    after = door.status()
    assert after["processes"] == 2
    assert after["handshakes"] - before["handshakes"] == 13
    assert after["admitted"] - before["admitted"] == 1
    # Each child counted some of them: the kernel spread the connections.
    assert sum(1 for url in door.admin_urls if _handshakes(url) > 0) == 2


def _handshakes(url: str) -> int:
    from simulators.gateway import GatewayAdmin

    return int(GatewayAdmin(url).status()["handshakes"])


async def test_a_fault_reaches_every_child(regions: LocalRegions, device: CertifiedKey) -> None:
    prober, endpoint, host = _prober(regions, device)
    regions.set_fault(PRIMARY, "down")
    try:
        door = regions.door(PRIMARY)
        assert isinstance(door, GatewayProcesses)
        from simulators.gateway import GatewayAdmin

        assert {GatewayAdmin(u).fault()["mode"] for u in door.admin_urls} == {"down"}
        outcomes = [await prober.probe(endpoint, host, "tls") for _ in range(6)]
        assert all(not o.ok for o in outcomes)
    finally:
        regions.set_fault(PRIMARY, "up")
    outcome = await prober.probe(endpoint, host, "tls")
    assert outcome.ok, outcome


def test_the_threaded_accessor_says_what_to_use(regions: LocalRegions) -> None:
    with pytest.raises(SimulatorError, match="runs as processes"):
        regions.gateway(PRIMARY)


def test_children_stop_by_pid(tmp_path: Path) -> None:
    with LocalRegions(state_dir=tmp_path, door_processes=1, health=None) as running:
        door = running.door(PRIMARY)
        assert isinstance(door, GatewayProcesses)
        pids = door.pids
        assert len(pids) == 1
        config = door.config
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert config_from_json(config_to_json(config)) == config


def test_pending_is_asked_in_chunks_the_admin_endpoint_takes(regions: LocalRegions) -> None:
    from simulators.gateway import GatewayAdmin
    from simulators.gateway._admin import PENDING_CHUNK

    door = regions.door(PRIMARY)
    unknown = {f"{i:064x}": f"thing-{i}" for i in range(3 * PENDING_CHUNK + 7)}
    assert door.pending(unknown) == len(unknown)
    assert GatewayAdmin(door.admin_url or "").pending(unknown) == len(unknown)


def test_broker_shards_spread_devices_and_bridge_every_topic(tmp_path: Path) -> None:
    """Leaf brokers bridged to the region's: a device on a leaf reaches the region's consumers."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from simulators._broker import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("leaf brokers need mosquitto")
    with LocalRegions(state_dir=tmp_path, broker_shards=3, health=None) as running:
        region = running.endpoints()["regions"][PRIMARY]
        leaves = region["leaf_brokers"]
        assert len(leaves) == 2
        hub_host, hub_port = region["mqtt"].rsplit(":", 1)
        leaf_host, leaf_port = leaves[1].rsplit(":", 1)
        got: dict[str, queue.Queue[tuple[str, bytes]]] = {
            "hub": queue.Queue(),
            "leaf": queue.Queue(),
        }

        def client(name: str, host: str, port: str) -> mqtt.Client:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
            c.on_message = lambda _c, _u, m: got[name].put((m.topic, bytes(m.payload)))
            c.connect(host, int(port))
            c.subscribe([("#", 1), ("$aws/#", 1)])
            c.loop_start()
            return c

        hub, leaf = client("hub", hub_host, hub_port), client("leaf", leaf_host, leaf_port)
        try:
            # Subscriptions reach the bridge asynchronously: publish until both sides see it.
            for attempt in range(50):
                leaf.publish(f"iotdr/sim/dev/telemetry/{attempt}", b"up", qos=1)
                hub.publish(f"$aws/things/dev/shadow/update/accepted/{attempt}", b"down", qos=1)
                try:
                    up = got["hub"].get(timeout=0.2)
                    down = got["leaf"].get(timeout=0.2)
                except queue.Empty:
                    continue
                break
            else:
                pytest.fail("the leaf and the region's broker never exchanged a message")
            seen_hub = [up, *_drain(got["hub"])]
            seen_leaf = [down, *_drain(got["leaf"])]
            assert any(t.startswith("iotdr/sim/dev/telemetry/") for t, _ in seen_hub)
            assert any(t.startswith("$aws/things/dev/shadow/") for t, _ in seen_leaf)
            # Nothing loops: each message arrives once on each side.
            assert len(seen_hub) == len(set(seen_hub))
            assert len(seen_leaf) == len(set(seen_leaf))
        finally:
            hub.loop_stop()
            leaf.loop_stop()
        door = running.gateway(PRIMARY).gateway.config
        spread = {door.broker_for(f"sim-{i:05d}") for i in range(300)}
        assert len(spread) == 3  # the hub and both leaves take devices
        assert door.broker_for("sim-00042") == door.broker_for("sim-00042")


def _drain(q: queue.Queue[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            found.append(q.get(timeout=0.1))
        except queue.Empty:
            continue
    return found
