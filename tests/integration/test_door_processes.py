"""The door as processes of its own (``LocalRegions(door_processes=N)``): one port, N children."""

from __future__ import annotations

import os
import ssl
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
