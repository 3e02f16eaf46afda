"""Every built-in scenario, played in memory on virtual time with 100-200 real agents.

The acceptance of the fleet simulator, checked on behaviour (never on
wall-clock time): every device present at the disruption fails over and back
(none moves when nothing disrupts the primary), no message is lost, no device
is ever connected to two regions at once (the report's events and the
network's own connection log agree), every refusal has a reason the report
explains, and the report's numbers are the cloud side's counts.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from simulators.fleet._memory import MemoryRun, run_memory_scenario
from simulators.fleet._report import _explain, fault_windows
from simulators.fleet._scenario import (
    CreateDevicesStep,
    DeviceFaultStep,
    FaultStep,
    builtin_scenarios,
    with_devices,
)

if TYPE_CHECKING:
    from simulators.fleet._records import RunRecord

SCENARIOS = builtin_scenarios()
DEVICES = 100
# Enough devices for the whole fleet to overrun the secondary's 50/s CONNECT quota.
DEVICES_BY_SCENARIO = {"reconnect-storm": 150}
# A connect that began while a region was faulted ends (refused, timed out) a little later.
FAULT_TAIL_S = 15.0
DOOR_REFUSAL_KINDS = frozenset({"not_authorized", "unavailable", "closed", "throttled"})

Played = tuple["RunRecord", dict[str, Any], MemoryRun]
_played: dict[tuple[str, int], Played] = {}


def play(name: str, *, seed: int = 0) -> Played:
    """Each scenario is played once per seed for the whole module."""
    if (name, seed) not in _played:
        scenario = with_devices(SCENARIOS[name], DEVICES_BY_SCENARIO.get(name, DEVICES))
        _played[name, seed] = run_memory_scenario(scenario, seed=seed)
    return _played[name, seed]


def _first_ack(record: RunRecord, device: str, since: float, *, in_primary: bool) -> bool:
    primary = record.regions[0]
    return any(
        e.device == device
        and e.kind == "first_ack"
        and e.t >= since
        and (e.region == primary) == in_primary
        for e in record.events
    )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_in_memory(name: str) -> None:
    record, report, run = play(name)
    primary = record.regions[0]

    assert report["verdict"]["ok"], report["verdict"]["problems"]

    # Every device present at the disruption failed over and back; without one, none moved.
    start, end = report["disruption"]["start_s"], report["disruption"]["end_s"]
    if start is None:
        assert report["moved"]["count"] == 0
        assert all(e.region == primary for e in record.events if e.kind == "connected")
    else:
        assert report["present"] >= DEVICES
        assert report["failover"]["count"] == report["present"]
        assert report["not_failed_over"]["count"] == 0
        for device in record.devices[: report["present"]]:
            assert _first_ack(record, device, start, in_primary=False), device
        if end is not None:
            assert report["failback"]["count"] == report["present"]
            for device in record.devices[: report["present"]]:
                assert _first_ack(record, device, end, in_primary=True), device

    # No message lost: every numbered message of every device reached a region.
    assert report["messages"]["lost"] == 0
    received: dict[str, set[int]] = {}
    for arrival in run.stage.arrivals:
        received.setdefault(arrival.device, set()).add(arrival.seq)
    for device_name, agent in run.fleet.devices.items():
        assert agent.sent > 0, device_name
        assert set(range(1, agent.sent + 1)) <= received.get(device_name, set()), device_name

    # Never connected to two regions at once: the report's view and the network's log.
    assert report["overlaps"]["count"] == 0
    assert run.network.overlaps() == []

    # The report's numbers are the cloud side's counts.
    distinct = {(a.device, a.seq) for a in run.stage.arrivals}
    assert report["messages"]["delivered"] == len(distinct)
    assert report["messages"]["duplicated"] == len(run.stage.arrivals) - len(distinct)
    assert report["messages"]["sent"] == sum(d.sent for d in run.fleet.devices.values())
    assert report["devices"] == len(run.fleet.devices) == len(record.devices)
    for region in record.regions:
        assert report["devices_final"][region] == len(run.connected_at_end[region])
        samples = [s for s in record.doors if s.region == region]
        first, last = run.t0 + samples[0].t, run.t0 + samples[-1].t
        opened = sum(
            1
            for line in run.network.connection_log
            if line.region == region and line.kind == "open" and first < line.at <= last
        )
        assert report["connects"][region]["total"] == opened, region
    assert report["devices_final"]["none"] == 0

    # Every device's last reported shadow state is in every region (replicated both ways).
    assert report["shadows"]["checked"] == len(record.devices)
    assert report["shadows"]["diverged"] == 0

    # DNS: the health checker moved the CNAME only when the primary was unhealthy to it.
    health = run.stage.health.regions[primary]
    config = run.stage.health.config
    device_side = _device_windows(record)
    outages = [
        end_ - begin
        for begin, end_, region, mode in fault_windows(record)
        if region == primary
        and mode in {"down", "blackhole"}
        and (begin, end_, region, mode) not in device_side
    ]
    if device_side:  # the devices' way failed, the door never did: the checker saw it up
        assert health.changed_at is None
    if any(o >= config.interval_s * (config.failure_threshold + 1) for o in outages):
        assert health.changed_at is not None  # it saw the outage and flipped the CNAME
    elif all(o < config.interval_s * (config.failure_threshold - 1) for o in outages):
        # partial (the checker gets in, devices do not), short outages (flapping): no flip
        assert health.changed_at is None
    assert run.stage.dns.cname == primary

    _check_refusals(record, report, run)
    _check_created(record, report, run)
    _check_registries(record, run)


def _device_windows(record: RunRecord) -> list[tuple[float, float, str, str]]:
    """The fault windows of the scenario's device-side faults (recorded as faults, too)."""
    steps = [s for s in SCENARIOS[record.scenario].timeline if isinstance(s, DeviceFaultStep)]
    return [
        window
        for window in fault_windows(record)
        if any(
            window[2] == s.region and window[3] == s.mode and abs(window[0] - s.at) < 1
            for s in steps
        )
    ]


def _check_refusals(record: RunRecord, report: dict[str, Any], run: MemoryRun) -> None:
    """Every refusal has a reason: the door's, or the fault of the region that was faulted."""
    windows = fault_windows(record)
    device_side = _device_windows(record)
    for region, reasons in report["refusals"]["door"].items():
        for reason in reasons:
            explained = _explain(report, region, reason)
            assert not explained.startswith("no explanation"), (region, reason)
    # Each refusal a device saw is one the door counted: by its reason at a working door,
    # as the fault's when a fault held it (it timed out); ``down`` has no door to count.
    seen: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for event in record.events:
        if event.kind != "refused":
            continue
        assert event.region is not None
        if event.detail in DOOR_REFUSAL_KINDS:
            seen[event.region] += 1
        else:  # refused, timeout: the region's fault (the door's holds and counts it)
            on_devices = any(
                r == event.region and begin <= event.t <= finish + FAULT_TAIL_S
                for begin, finish, r, _ in device_side
            )
            if event.detail == "timeout" and not on_devices:
                held[event.region] += 1
            assert any(
                r == event.region and begin <= event.t <= finish + FAULT_TAIL_S
                for begin, finish, r, mode in windows
                if not mode.startswith("control-plane")
            ), event
    for region in record.regions:
        counted = run.stage.door.refused[region]
        faults = sum(n for reason, n in counted.items() if reason.startswith("fault_"))
        assert seen[region] == sum(counted.values()) - faults, region
        assert held[region] == faults, region
    # Every device ends connected, those the door refused included.
    refused = {e.device for e in record.events if e.kind == "refused"}
    assert all(record.final_region[d] is not None for d in refused)
    if record.scenario == "reconnect-storm":
        assert report["refusals"]["door"][record.regions[1]].get("throttled_account", 0) > 0
        # MQTT 5: the devices read a refusal for quota as such, not as a failure.
        assert report["refusals"]["devices"][record.regions[1]].get("throttled", 0) > 0


def _check_created(record: RunRecord, report: dict[str, Any], run: MemoryRun) -> None:
    """Devices created during the run are in the fleet, connected, and where the mode puts them."""
    scenario = SCENARIOS[record.scenario]
    asked = sum(s.count for s in scenario.timeline if isinstance(s, CreateDevicesStep))
    created = sorted({e.device for e in record.events if e.kind == "created"})
    failed = [n for n in record.notes if "creating" in n and "failed" in n]
    control_plane_fault = any(
        isinstance(s, FaultStep) and s.mode.startswith("control-plane") for s in scenario.timeline
    )
    # Only a control plane that fails while the devices are being registered stops it.
    assert len(created) == asked or (failed and control_plane_fault), (created, record.notes)
    assert report["created"]["count"] == len(created)
    assert report["created"]["never_acked"] == []
    assert sum(report["devices_final"].values()) == len(record.devices)
    secondary = run.stage.apis[record.regions[1]].registry
    start, end = report["disruption"]["start_s"], report["disruption"]["end_s"]
    for device in created:
        assert record.final_region[device] is not None, device
        created_at = min(e.t for e in record.events if e.device == device and e.kind == "created")
        if start is not None and end is not None and start <= created_at < end:
            # Created while the primary was away: it got into the secondary before it came back.
            assert any(
                e.device == device
                and e.kind == "first_ack"
                and e.region == record.regions[1]
                and e.t < end
                for e in record.events
            ), device
        cert_id = run.stage.identities.ids[device]
        if scenario.replication == "jitr":
            # Registered there by the door's JITR, activated by the JITR handler.
            assert secondary.certificates[cert_id].status == "ACTIVE", device
            assert cert_id in (secondary.things[device].principals or ()), device
        elif scenario.replication == "complete":
            assert secondary.certificates[cert_id].status == "ACTIVE", device
    if scenario.replication == "jitr" and created:
        assert report["refusals"]["door"][record.regions[1]].get("jitr", 0) == len(created)


def test_the_seed_changes_the_timings_not_the_verdict() -> None:
    """Another seed (other jitter, other start phases): the same outcome."""
    record, report, _ = play("region-outage", seed=0)
    other_record, other, _ = play("region-outage", seed=1)
    assert other["verdict"] == report["verdict"]
    for key in ("failover", "failback"):
        assert other[key]["count"] == report[key]["count"] == DEVICES
    assert other["messages"]["lost"] == 0
    assert other_record.events != record.events  # the seed did reach the devices


def test_a_run_repeats_exactly_with_its_seed() -> None:
    """Virtual time and seeded randomness: the same seed gives the same report, to the event."""
    scenario = with_devices(SCENARIOS["flapping"], 30)
    first_record, first, _ = run_memory_scenario(scenario, seed=5)
    second_record, second, _ = run_memory_scenario(scenario, seed=5)
    assert first == second
    assert first_record.events == second_record.events


def _check_registries(record: RunRecord, run: MemoryRun) -> None:
    """The replicator caught up: what the primary's registry holds, the secondary's does."""
    mode = SCENARIOS[record.scenario].replication
    primary = run.stage.apis[record.regions[0]].registry
    secondary = run.stage.apis[record.regions[1]].registry
    if mode == "off":
        return
    assert set(primary.things) <= set(secondary.things)
    if mode == "complete":
        # Copied before any device needed it in the secondary: no certificate unknown there.
        for reasons in run.stage.door.refused.values():
            assert reasons["certificate_unknown"] == 0
        for cert_id, certificate in primary.certificates.items():
            assert secondary.certificates[cert_id].status == certificate.status, cert_id
        for name, thing in primary.things.items():
            assert secondary.things[name].principals == thing.principals, name
