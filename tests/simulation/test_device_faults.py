"""Device-side faults in memory: the devices' way to the primary fails, its door never does.

The scenarios run on the in-memory world and virtual time with 200 real
agents, each with the same fault wrappers (:mod:`simulators.fleet._device_faults`)
around its transport and prober as in a device host.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

import pytest

from device_agent import ConnectError, ConnectParams, TransportCallbacks, TransportClosedError
from device_agent.testing import MemoryNetwork, run_virtual
from simulators.fleet._device_faults import DeviceFaults, chosen
from simulators.fleet._memory import run_memory_scenario
from simulators.fleet._scenario import parse_scenario

if TYPE_CHECKING:
    from simulators.fleet._memory import MemoryRun
    from simulators.fleet._records import RunRecord

DEVICES = 200
PRIMARY, SECONDARY = "us-east-1", "us-west-2"
FAULT_AT, HEAL_AT = 30, 90

_SCENARIO = """\
name: device-{mode}
devices: {devices}
duration_s: 260
regions: [us-east-1, us-west-2]
fleet: {{telemetry_interval_s: 1.0, shadow_interval_s: 10}}
agent: {{failover: {{stability_window_s: 20}}}}
timeline:
  - {{at: {fault_at}, fault: {{side: devices, region: us-east-1, mode: {mode}{fraction}}}}}
  - {{at: {heal_at}, heal: {{region: us-east-1{side}}}}}
"""

Played = tuple["RunRecord", dict[str, Any], "MemoryRun"]
_played: dict[tuple[str, float, int, bool], Played] = {}


def play(
    mode: str, *, fraction: float = 1.0, devices: int = DEVICES, heal_both: bool = False
) -> Played:
    """Each variant is played once for the module."""
    key = (mode, fraction, devices, heal_both)
    if key not in _played:
        text = _SCENARIO.format(
            mode=mode,
            devices=devices,
            fault_at=FAULT_AT,
            heal_at=HEAL_AT,
            fraction="" if fraction == 1 else f", fraction: {fraction}",
            side="" if heal_both else ", side: devices",
        )
        _played[key] = run_memory_scenario(parse_scenario(text), seed=0)
    return _played[key]


def _moved(record: RunRecord) -> set[str]:
    """Devices acknowledged in the secondary during the fault."""
    return {
        e.device
        for e in record.events
        if e.kind == "first_ack" and e.region == SECONDARY and FAULT_AT <= e.t <= HEAL_AT
    }


def _door_untouched(run: MemoryRun) -> None:
    """The primary's door and network never faulted: the health checker never saw it fail."""
    assert run.network.region(PRIMARY).mode == "up"
    for region in (PRIMARY, SECONDARY):
        faults = {k: n for k, n in run.stage.door.refused[region].items() if k.startswith("fault")}
        assert faults == {}, region
    assert run.stage.health.regions[PRIMARY].changed_at is None
    assert run.stage.dns.cname == PRIMARY


def _nothing_lost(report: dict[str, Any], run: MemoryRun) -> None:
    assert report["messages"]["lost"] == 0
    received: dict[str, set[int]] = {}
    for arrival in run.stage.arrivals:
        received.setdefault(arrival.device, set()).add(arrival.seq)
    for name, device in run.fleet.devices.items():
        assert device.sent > 0, name
        assert set(range(1, device.sent + 1)) <= received.get(name, set()), name
    assert report["overlaps"]["count"] == 0
    assert run.network.overlaps() == []


def test_a_device_side_blackhole_moves_the_whole_fleet_and_back() -> None:
    record, report, run = play("blackhole")

    assert report["verdict"]["ok"], report["verdict"]["problems"]
    assert report["failover"]["count"] == report["failback"]["count"] == DEVICES
    assert _moved(record) == set(record.devices)
    # Silence, not errors: the agents' connects timed out, nothing refused or reset them.
    kinds = {e.detail for e in record.events if e.kind == "refused" and e.region == PRIMARY}
    assert kinds <= {"timeout"}
    assert report["devices_final"] == {PRIMARY: DEVICES, SECONDARY: 0, "none": 0}
    _nothing_lost(report, run)
    _door_untouched(run)
    assert any("devices' side" in note for note in record.notes)


def test_half_the_fleet_moves_the_half_the_seed_chooses() -> None:
    record, report, run = play("blackhole", fraction=0.5)

    chosen_devices = {d for d in record.devices if chosen(0, d, 0.5)}
    assert 0.35 * DEVICES <= len(chosen_devices) <= 0.65 * DEVICES
    assert _moved(record) == chosen_devices
    # The others never left the primary.
    left = {e.device for e in record.events if e.kind == "disconnected" and e.region == PRIMARY}
    assert left == chosen_devices
    assert report["devices_final"] == {PRIMARY: DEVICES, SECONDARY: 0, "none": 0}
    # The report expects of the chosen half what a whole-fleet fault expects of all.
    assert any(s.detail == "blackhole 50%" for s in record.steps)
    assert report["verdict"]["ok"], report["verdict"]["problems"]
    assert report["present"] == len(chosen_devices)
    assert report["failover"]["count"] == report["failback"]["count"] == len(chosen_devices)
    _nothing_lost(report, run)
    _door_untouched(run)


def test_the_choice_is_the_seed_and_the_name_and_nests() -> None:
    names = [f"sim-{i:05d}" for i in range(1, 2001)]
    half = {n for n in names if chosen(0, n, 0.5)}
    assert half == {n for n in names if chosen(0, n, 0.5)}
    assert 900 <= len(half) <= 1100
    assert {n for n in names if chosen(0, n, 0.25)} <= half
    assert {n for n in names if chosen(1, n, 0.5)} != half
    assert all(chosen(7, n, 1.0) for n in names)


@pytest.mark.parametrize(("mode", "kind"), [("refuse", "refused"), ("reset", "closed")])
def test_refused_and_reset_move_the_fleet_with_the_agents_own_kinds(mode: str, kind: str) -> None:
    record, report, run = play(mode, devices=50, heal_both=True)

    assert _moved(record) == set(record.devices)
    # Cut at once: every device lost its connection as the fault began.
    lost = {
        e.device
        for e in record.events
        if e.kind == "disconnected" and e.region == PRIMARY and FAULT_AT <= e.t < FAULT_AT + 1
    }
    assert lost == set(record.devices)
    kinds = {e.detail for e in record.events if e.kind == "refused" and e.region == PRIMARY}
    assert kinds == {kind}
    # Back in the primary after the heal (the report's disruption knows the door's modes
    # and blackhole only, so its failback count is not asked here).
    back = {
        e.device
        for e in record.events
        if e.kind == "first_ack" and e.region == PRIMARY and e.t >= HEAL_AT
    }
    assert back == set(record.devices)
    assert report["devices_final"] == {PRIMARY: 50, SECONDARY: 0, "none": 0}
    _nothing_lost(report, run)
    _door_untouched(run)


# -- one connection through the wrapper, on virtual time -----------------------------------------


class _Link:
    """One device connection into a two-region memory network, through a fault table."""

    def __init__(self, *, keepalive_s: int = 20, timeout_s: float = 5.0) -> None:
        self.network = MemoryNetwork([PRIMARY, SECONDARY], latency_s=0.01)
        self.faults = DeviceFaults(seed=0)
        self.received: list[bytes] = []
        self.lost: list[str] = []
        self.gone = asyncio.Event()
        endpoint = self.network.endpoints[PRIMARY]
        params = ConnectParams(
            endpoint=endpoint,
            address=self.network.region(PRIMARY).address,
            client_id="dev-1",
            ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            keepalive_s=keepalive_s,
            timeout_s=timeout_s,
        )
        callbacks = TransportCallbacks(
            on_message=lambda _t, payload, _q, _r: self.received.append(payload),
            on_lost=self._on_lost,
        )
        self.transport = self.faults.transport_factory(self.network.transport_factory)(
            params, callbacks
        )

    def _on_lost(self, kind: str) -> None:
        self.lost.append(kind)
        self.gone.set()

    async def connected(self) -> None:
        await self.transport.connect()
        await self.transport.subscribe("down/#", 1)


def test_a_silent_connection_holds_both_ways_and_flows_again_on_the_heal() -> None:
    async def scenario() -> tuple[_Link, list[str]]:
        link = _Link()
        await link.connected()
        link.faults.set(PRIMARY, "blackhole")
        publish = asyncio.create_task(link.transport.publish("up/1", b"held", 1))
        link.network.publish(PRIMARY, "down/1", b"to the device", 1)
        await asyncio.sleep(10)
        during = [str(publish.done()), str(link.received), str(link.transport.connected)]
        link.faults.clear(PRIMARY)
        await publish  # acknowledged once the way is back
        await asyncio.sleep(1)
        await link.transport.disconnect()
        return link, during

    link, during = run_virtual(scenario())
    assert during == ["False", "[]", "True"]  # nothing through, and it looks up
    assert link.received == [b"to the device"]
    assert link.lost == []


def test_a_silent_connection_is_lost_when_the_keepalive_runs_out() -> None:
    async def scenario() -> tuple[_Link, float, BaseException | None]:
        link = _Link(keepalive_s=20)
        await link.connected()
        loop = asyncio.get_running_loop()
        began = loop.time()
        link.faults.set(PRIMARY, "blackhole")
        publish = asyncio.create_task(link.transport.publish("up/1", b"lost", 1))
        await link.gone.wait()
        after = loop.time() - began
        await asyncio.gather(publish, return_exceptions=True)
        return link, after, publish.exception()

    link, after, error = run_virtual(scenario())
    assert link.lost == ["timeout"]
    assert 29.5 <= after <= 31  # 1.5 keep-alives
    assert isinstance(error, TransportClosedError)
    assert not link.transport.connected


@pytest.mark.parametrize(
    ("mode", "kind", "waited"),
    [("refuse", "refused", 0), ("reset", "closed", 0), ("blackhole", "timeout", 5)],
)
def test_a_connect_meets_the_fault(mode: str, kind: str, waited: float) -> None:
    async def scenario() -> tuple[str, float]:
        link = _Link(timeout_s=5.0)
        link.faults.set(PRIMARY, mode)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ConnectError) as info:
            await link.transport.connect()
        return info.value.kind, loop.time() - began

    got, took = run_virtual(scenario())
    assert got == kind
    assert took == pytest.approx(waited, abs=0.01)


def test_a_fault_of_the_other_region_or_a_device_not_chosen_changes_nothing() -> None:
    async def scenario() -> list[str]:
        link = _Link()
        link.faults.set(SECONDARY, "refuse")
        # dev-1 is not among the 1 % that seed 0 chooses.
        assert not chosen(0, "dev-1", 0.01)
        link.faults.set(PRIMARY, "reset", 0.01)
        await link.connected()
        await link.transport.publish("up/1", b"fine", 1)
        await link.transport.disconnect()
        return link.lost

    assert run_virtual(scenario()) == []
