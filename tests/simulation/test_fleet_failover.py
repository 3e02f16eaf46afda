"""200 real agents on the in-memory network and virtual time: fail over, fail back, lose nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from device_agent.testing import FaultMode, MemoryNetwork, run_virtual
from tests.simulation.world import FAILOVER, PRIMARY, SECONDARY, Cloud, Fleet, payload_numbers

if TYPE_CHECKING:
    from device_agent._transport import ConnectErrorKind

DEVICES = 200


async def _outage(mode: FaultMode) -> tuple[MemoryNetwork, Cloud, Fleet, float, float]:
    network = MemoryNetwork([PRIMARY, SECONDARY], latency_s=0.02)
    cloud = Cloud(network)
    fleet = Fleet(network, DEVICES)
    loop = asyncio.get_running_loop()
    await fleet.start(interval_s=2.0)
    try:
        await fleet.wait_all_in(PRIMARY, within_s=30)
        await asyncio.sleep(10)
        fault_at = loop.time()
        network.set_mode(PRIMARY, mode)
        await fleet.wait_all_in(SECONDARY, within_s=120)
        await asyncio.sleep(20)
        heal_at = loop.time()
        network.heal(PRIMARY)
        await fleet.wait_all_in(PRIMARY, within_s=FAILOVER.stability_window_s + 60)
        await fleet.stop_publishing()
        async with asyncio.timeout(60):
            for device in fleet.devices:
                await device.client.flush()
    finally:
        await fleet.close()
    return network, cloud, fleet, fault_at, heal_at


@pytest.mark.parametrize("mode", ["down", "blackhole"])
def test_fleet_fails_over_and_back_without_losing_a_message(mode: FaultMode) -> None:
    network, cloud, fleet, fault_at, heal_at = run_virtual(_outage(mode))

    for device in fleet.devices:
        failovers = device.times("failover.complete")
        failbacks = device.times("failback.complete")
        assert len(failovers) == 1, (device.name, device.events)
        assert fault_at < failovers[0] < heal_at
        assert len(failbacks) == 1, device.name
        # Failback only after the primary passed probes for the whole stability window.
        assert failbacks[0] >= heal_at + FAILOVER.stability_window_s
        # Zero loss: every numbered message reached one region or the other.
        assert device.sent > 0
        assert payload_numbers(device) <= cloud.received[device.name], device.name

    assert network.overlaps() == []
    assert cloud.by_region[SECONDARY] > 0
    stats = network.region(SECONDARY).stats
    assert stats.connects >= DEVICES
    if mode == "down":
        assert network.region(PRIMARY).stats.refusals["refused"] >= DEVICES
        assert network.region(PRIMARY).stats.lost == DEVICES
    else:
        assert network.region(PRIMARY).stats.lost == 0  # nothing closed: the devices left


def test_connection_log_never_shows_one_device_in_two_regions() -> None:
    """The log check itself: the same fleet under a refusing door in the secondary first."""

    async def scenario() -> MemoryNetwork:
        refused: set[str] = set()

        def door(region: str, client_id: str) -> ConnectErrorKind | None:
            # Every device is turned away once by the secondary (not yet replicated).
            if region == SECONDARY and client_id not in refused:
                refused.add(client_id)
                return "not_authorized"
            return None

        network = MemoryNetwork([PRIMARY, SECONDARY], latency_s=0.01, admit=door)
        fleet = Fleet(network, 100, seed=3)
        await fleet.start(interval_s=5.0)
        try:
            await fleet.wait_all_in(PRIMARY, within_s=30)
            network.set_mode(PRIMARY, "down")
            await fleet.wait_all_in(SECONDARY, within_s=180)
        finally:
            await fleet.close()
        return network

    network = run_virtual(scenario())
    assert network.overlaps() == []
    assert network.region(SECONDARY).stats.refusals["not_authorized"] == 100
    assert network.connected(PRIMARY) == network.connected(SECONDARY) == set()
