"""Shards: index arithmetic, the record file, and merging shard records (all pure)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent.testing import run_virtual
from simulators._errors import SimulatorError
from simulators.fleet._merge import merge_records, on_common_timeline
from simulators.fleet._play import FleetFinal
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._record_file import read_record, record_from_json, record_to_json
from simulators.fleet._records import (
    Arrival,
    DeviceEvent,
    DoorSample,
    RunRecord,
    SentSample,
    ShadowCheck,
    StepRecord,
)
from simulators.fleet._report import build_report
from simulators.fleet._scenario import FaultStep, parse_scenario
from simulators.fleet._shard import Shard, ShardPlayer, parse_shard, shard_names, share

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

E, W = "us-east-1", "us-west-2"

# -- index arithmetic ---------------------------------------------------------------------


@given(total=st.integers(0, 5000), count=st.integers(1, 64))
def test_every_device_is_in_exactly_one_shard(total: int, count: int) -> None:
    shares = [share(total, Shard(index=i, count=count)) for i in range(count)]
    positions = [p for s in shares for p in s]
    assert positions == list(range(total))  # contiguous, in order, each once
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


@given(total=st.integers(1, 3000), count=st.integers(1, 16))
def test_shard_names_are_those_of_one_run(total: int, count: int) -> None:
    names = [n for i in range(count) for n in shard_names(total, Shard(index=i, count=count))]
    assert names == fleet_device_names(total)


def test_created_devices_continue_the_numbering() -> None:
    shard = Shard(index=1, count=2)
    assert shard_names(4, shard, start=101) == ["sim-00103", "sim-00104"]
    assert shard_names(1, Shard(index=0, count=2), start=5) == []


@pytest.mark.parametrize(
    ("text", "expected"), [("0/1", (0, 1)), ("3/4", (3, 4)), (" 2 / 10 ", (2, 10))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected
    assert shard.owner == (expected[0] == 0)


@pytest.mark.parametrize("text", ["4/4", "1", "-1/2", "a/b", "0/0", "1/2/3"])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(SimulatorError, match="I/N"):
        parse_shard(text)


# -- a run, split into shards -------------------------------------------------------------


def _device(
    name: str, over: float, back: float, sent: int
) -> tuple[list[DeviceEvent], list[Arrival]]:
    events = [
        DeviceEvent(0.5, name, "started"),
        DeviceEvent(1.0, name, "connected", E),
        DeviceEvent(1.1, name, "first_ack", E),
        DeviceEvent(30.0, name, "disconnected", E),
        DeviceEvent(30.5, name, "detected", E),
        DeviceEvent(over - 0.1, name, "connected", W),
        DeviceEvent(over, name, "first_ack", W),
        DeviceEvent(back - 0.2, name, "disconnected", W),
        DeviceEvent(back - 0.1, name, "connected", E),
        DeviceEvent(back, name, "first_ack", E),
    ]
    arrivals = [Arrival(float(seq), E if seq < 30 else W, name, seq) for seq in range(1, sent + 1)]
    return events, arrivals


def _whole(names: list[str]) -> RunRecord:
    events: list[DeviceEvent] = []
    arrivals: list[Arrival] = []
    for i, name in enumerate(names):
        mine, came = _device(name, over=32.0 + i, back=95.0 + i, sent=40 + i)
        events += mine
        arrivals += came
    arrivals.append(Arrival(50.0, W, names[0], 3))  # one duplicate
    return RunRecord(
        scenario="region-outage",
        seed=3,
        duration_s=120.0,
        regions=(E, W),
        devices=tuple(names),
        settings={"processes": 2, "device_hosts": {"processes": 2, "max_rss_mb": 10.0, "cpu_s": 3}},
        steps=[StepRecord(30.0, "fault", E, "down"), StepRecord(90.0, "heal", E, "up")],
        events=events,
        arrivals=arrivals,
        sent={name: 40 + i for i, name in enumerate(names)},
        sent_samples=[SentSample(float(t), t * len(names)) for t in range(121)],
        doors=[DoorSample(float(t), E, 3, t, {"fault_down": t // 2}, t * 3) for t in range(121)],
        shadows=ShadowCheck(len(names), 1, (names[-1],)),
        replicator_lag_s=[(1.0, 0.2), (2.0, 0.1)],
        final_region=dict.fromkeys(names, E),
        notes=["something"],
    )


def _split(whole: RunRecord, count: int) -> list[RunRecord]:
    """What ``count`` shards of ``whole``'s fleet would have recorded."""
    shards = []
    for index in range(count):
        shard = Shard(index=index, count=count)
        mine = set(shard_names(len(whole.devices), shard))
        shards.append(
            dataclasses.replace(
                whole,
                devices=tuple(d for d in whole.devices if d in mine),
                steps=list(whole.steps),
                settings={**whole.settings, "shard": shard.as_dict()},
                events=[e for e in whole.events if e.device in mine],
                arrivals=[a for a in whole.arrivals if a.device in mine],
                sent={d: n for d, n in whole.sent.items() if d in mine},
                sent_samples=[
                    SentSample(s.t, s.sent * len(mine) // len(whole.devices))
                    for s in whole.sent_samples
                ],
                shadows=ShadowCheck(
                    len(mine),
                    sum(1 for d in whole.shadows.diverged_devices if d in mine),
                    tuple(d for d in whole.shadows.diverged_devices if d in mine),
                ),
                replicator_lag_s=whole.replicator_lag_s if shard.owner else [],
                final_region={d: r for d, r in whole.final_region.items() if d in mine},
            )
        )
    return shards


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_merged_shards_report_as_the_whole_run(count: int) -> None:
    whole = _whole(fleet_device_names(7))
    shards = _split(whole, count)
    merged = merge_records(list(reversed(shards)))  # any order
    one, many = build_report(whole), build_report(merged)
    for key in (
        "devices",
        "messages",
        "failover",
        "failback",
        "detection",
        "connects",
        "handshakes",
        "failback_storm",
        "overlaps",
        "devices_final",
        "replicator",
        "steps",
        "verdict",
    ):
        assert many[key] == one[key], key
    assert many["shadows"]["diverged"] == one["shadows"]["diverged"] == 1
    parts = [build_report(s) for s in shards]
    assert many["devices"] == sum(p["devices"] for p in parts)
    for field in ("sent", "delivered", "lost", "duplicated"):
        assert many["messages"][field] == sum(p["messages"][field] for p in parts)
    assert many["failover"]["count"] == sum(p["failover"]["count"] for p in parts)
    assert merged.settings["shard"] == {"count": count, "merged": True}
    assert merged.settings["device_hosts"]["processes"] == 2 * count  # type: ignore[index]
    assert len(merged.notes) == count
    assert merged.notes[0] == f"shard 0/{count}: something"


def test_created_devices_steps_are_summed() -> None:
    whole = _whole(fleet_device_names(4))
    a, b = _split(whole, 2)
    a.steps.append(StepRecord(40.0, "create_devices", E, "0"))
    b.steps.append(StepRecord(40.2, "create_devices", E, "3"))
    b.steps.append(StepRecord(60.0, "create_devices", E, "failed"))
    a.steps.append(StepRecord(60.1, "create_devices", E, "2"))
    steps = [s for s in merge_records([a, b]).steps if s.action == "create_devices"]
    assert steps == [
        StepRecord(40.0, "create_devices", E, "3"),
        StepRecord(60.0, "create_devices", E, "2 (1 shards failed)"),
    ]


def test_merge_refuses_what_is_not_one_split() -> None:
    whole = _whole(fleet_device_names(4))
    a, b, c = _split(whole, 3)
    with pytest.raises(SimulatorError, match="missing shard"):
        merge_records([a, c])
    with pytest.raises(SimulatorError, match="given twice"):
        merge_records([a, b, b])
    with pytest.raises(SimulatorError, match="not a shard's"):
        merge_records([whole, a])
    with pytest.raises(SimulatorError, match="seed"):
        merge_records([a, b, dataclasses.replace(c, seed=9)])
    with pytest.raises(SimulatorError, match="nothing to merge"):
        merge_records([])


# -- the record file ----------------------------------------------------------------------


def test_record_round_trip(tmp_path: Path) -> None:
    from simulators.fleet._record_file import write_record

    whole = _whole(fleet_device_names(3))
    whole.doors.append(DoorSample(121.0, W, 0, 0, {}, None, {"policy_publish_denied": 2}))
    assert record_from_json(record_to_json(whole)) == whole
    write_record(whole, tmp_path / "record.json.gz")
    assert read_record(tmp_path / "record.json.gz") == whole


def test_a_record_from_before_denials_reads_with_no_denials() -> None:
    data = record_to_json(_whole(fleet_device_names(1)))
    data["doors"] = [row[:6] for row in data["doors"]]
    assert data["doors"]
    assert all(door.denied == {} for door in record_from_json(data).doors)


def test_record_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="not found"):
        read_record(tmp_path / "record.json.gz")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(SimulatorError, match="cannot be read"):
        read_record(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "other.gz", "wt") as out:
        out.write('{"format": "something-else"}')
    with pytest.raises(SimulatorError, match="not a fleet run's record"):
        read_record(tmp_path / "other.gz")
    data = record_to_json(_whole(fleet_device_names(1)))
    data["events"][0][2] = "exploded"
    with pytest.raises(SimulatorError, match=r"malformed.*exploded"):
        record_from_json(data)


# -- the shard's player, on virtual time ----------------------------------------------------


class _Stage:
    """Carries steps out (records them) and registers devices; nothing else to measure."""

    def __init__(self) -> None:
        self.applied: list[tuple[float, str]] = []
        self.registered: list[str] = []

    async def apply(self, step: Any) -> str:
        self.applied.append((asyncio.get_running_loop().time(), type(step).__name__))
        return "down" if isinstance(step, FaultStep) else "up"

    async def register_devices(self, names: Sequence[str]) -> list[dict[str, str]]:
        self.registered += names
        return [{"name": n} for n in names]

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        return [], None

    def delivered(self) -> int:
        return 0

    async def settle(self) -> list[Arrival]:
        return []

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        return ShadowCheck()


class _Fleet:
    """Devices that connect to the primary as soon as they are started."""

    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self.started: list[str] = []

    async def start(self, devices: Sequence[dict[str, str]]) -> None:
        await self.add(devices)

    async def add(self, devices: Sequence[dict[str, str]]) -> None:
        now = asyncio.get_running_loop().time()
        for device in devices:
            self.started.append(device["name"])
            self.events.append(DeviceEvent(now, device["name"], "connected", E))

    def take_events(self) -> list[DeviceEvent]:
        events, self.events = self.events, []
        return events

    def sent(self) -> int:
        return 0

    def check(self) -> None:
        pass

    async def set_device_fault(self, region: str, mode: str, fraction: float = 1.0) -> None:
        pass

    async def clear_device_fault(self, region: str) -> None:
        pass

    async def quiet(self) -> FleetFinal:
        return FleetFinal()


_TIMELINE = """\
name: sharded
devices: 10
duration_s: 4
regions: [us-east-1, us-west-2]
timeline:
  - {at: 1, fault: {region: us-east-1, mode: down}}
  - {at: 2, create_devices: 5}
  - {at: 3, heal: {region: us-east-1}}
"""


def _play(shard: Shard, *, start_at: float) -> tuple[RunRecord, _Stage, _Fleet, float]:
    scenario = parse_scenario(_TIMELINE, source="sharded.yaml")
    stage, fleet = _Stage(), _Fleet()
    record = RunRecord(scenario=scenario.name, regions=scenario.regions)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        player = ShardPlayer(
            scenario,
            stage,
            fleet,
            record,
            shard=shard,
            start_at=start_at,
            wall=lambda: 1_000.0 + loop.time(),  # the epoch at 1,000 s when the loop is at 0
        )
        names = shard_names(scenario.devices, shard)
        await player.run([{"name": n} for n in names])
        player.finish()
        assert player.t0 is not None
        return player.t0

    t0 = run_virtual(main())
    return record, stage, fleet, t0


def test_the_timeline_starts_at_the_wall_clock_instant() -> None:
    record, stage, fleet, t0 = _play(Shard(index=0, count=2), start_at=1_030.0)
    assert t0 == pytest.approx(30.0, abs=0.01)  # the loop's time when the epoch was 1,030
    assert fleet.started[:5] == ["sim-00001", "sim-00002", "sim-00003", "sim-00004", "sim-00005"]
    # The owner carries out the region steps, at t0 + their time.
    assert [(round(t - t0), kind) for t, kind in stage.applied] == [
        (1, "FaultStep"),
        (3, "HealStep"),
    ]
    # Its share of the 5 created devices continues the fleet's numbering: 11 and 12.
    assert stage.registered == ["sim-00011", "sim-00012"]
    assert record.devices[-2:] == ("sim-00011", "sim-00012")
    assert not record.notes
    assert record.settings["t0_wall"] == pytest.approx(1_030.0, abs=0.01)


def test_a_shard_that_is_late_starts_at_once_and_says_so() -> None:
    record, _, _, t0 = _play(Shard(index=1, count=2), start_at=990.0)
    assert t0 == pytest.approx(0.0, abs=0.5)
    assert any("started late" in note for note in record.notes)


def test_other_shards_record_region_steps_at_their_planned_time() -> None:
    record, stage, _, _ = _play(Shard(index=1, count=2), start_at=1_010.0)
    steps = [(s.t, s.action, s.detail) for s in sorted(record.steps, key=lambda s: s.t)]
    assert (1.0, "fault", "down") in steps
    assert (3.0, "heal", "up") in steps
    assert stage.registered == ["sim-00013", "sim-00014", "sim-00015"]
    assert (2.0, "create_devices", "3") in [(round(t), a, d) for t, a, d in steps]


def test_a_late_shard_is_put_back_on_the_common_timeline() -> None:
    whole = _whole(fleet_device_names(4))
    on_time, late = _split(whole, 2)
    on_time.settings.update(start_at=1_000.0, t0_wall=1_000.0)
    # Shard 1 started 2.5 s late: its t = 0 is 2.5 s into the common timeline.
    late.settings.update(start_at=1_000.0, t0_wall=1_002.5)
    late = dataclasses.replace(
        late,
        events=[dataclasses.replace(e, t=e.t - 2.5) for e in late.events],
        arrivals=[dataclasses.replace(a, t=a.t - 2.5) for a in late.arrivals],
    )
    assert on_common_timeline(on_time) is on_time
    merged = merge_records([on_time, late])
    assert sorted(merged.events, key=lambda e: (e.t, e.device, e.kind)) == sorted(
        whole.events, key=lambda e: (e.t, e.device, e.kind)
    )
    assert build_report(merged)["failover"] == build_report(whole)["failover"]
