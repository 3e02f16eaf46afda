"""The report's probe load (handshakes/s per door) and failback storm, on hand-made records."""

from __future__ import annotations

from simulators.fleet._records import DeviceEvent, DoorSample, RunRecord, StepRecord
from simulators.fleet._report import build_report, render_markdown

E, W = "us-east-1", "us-west-2"


def _back(device: str, at: float) -> list[DeviceEvent]:
    """On E, over to W at 32 s, back on E (first acknowledged publish) at ``at``."""
    return [
        DeviceEvent(1.0, device, "connected", E),
        DeviceEvent(1.1, device, "first_ack", E),
        DeviceEvent(30.0, device, "disconnected", E),
        DeviceEvent(31.9, device, "connected", W),
        DeviceEvent(32.0, device, "first_ack", W),
        DeviceEvent(at - 0.2, device, "disconnected", W),
        DeviceEvent(at - 0.1, device, "connected", E),
        DeviceEvent(at, device, "first_ack", E),
    ]


def _record(doors: list[DoorSample], backs: dict[str, float]) -> RunRecord:
    return RunRecord(
        scenario="region-outage",
        duration_s=120.0,
        regions=(E, W),
        devices=tuple(backs),
        steps=[StepRecord(30.0, "fault", E, "down"), StepRecord(90.0, "heal", E, "up")],
        events=[e for device, at in backs.items() for e in _back(device, at)],
        doors=doors,
        final_region=dict.fromkeys(backs, E),
    )


def test_handshakes_per_second_peak_and_p95() -> None:
    # 20 one-second windows at W: 10/s, one of 100/s, the rest 10/s; a restart (drop) counts
    # from zero.
    counts = [0]
    for second in range(1, 21):
        counts.append(counts[-1] + (100 if second == 5 else 10))
    doors = [DoorSample(float(t), W, 0, 0, {}, handshakes=c) for t, c in enumerate(counts)]
    report = build_report(_record(doors, {"a": 95.0}))
    load = report["handshakes"][W]
    assert load == {"total": 290, "peak_per_s": 100.0, "p95_per_s": 10.0}


def test_handshakes_absent_from_the_door_are_none() -> None:
    doors = [DoorSample(float(t), E, 0, t * 3, {}) for t in range(5)]
    report = build_report(_record(doors, {"a": 95.0}))
    assert report["handshakes"][E] == {"total": None, "peak_per_s": None, "p95_per_s": None}
    assert report["handshakes"][W] == {"total": None, "peak_per_s": None, "p95_per_s": None}
    assert "| us-east-1 | 12 | 3 | 0 | - | 1 |" in render_markdown(report)


def test_failback_storm_peak_after_the_heal_and_spread() -> None:
    # The primary admits 50/s before the heal at 90 s (not the storm) and 40/s then 80/s after.
    admitted = {88.0: 0, 89.0: 50, 90.0: 100, 91.0: 140, 92.0: 220, 93.0: 230}
    doors = [DoorSample(t, E, 0, n, {}, handshakes=n) for t, n in admitted.items()]
    backs = {f"d{i:02}": 90.0 + 1.0 + i for i in range(20)}  # failbacks 1..20 s after the heal
    report = build_report(_record(doors, backs))
    storm = report["failback_storm"]
    assert storm == {"peak_connects_per_s": 80.0, "peak_at_s": 92.0, "spread_s": 18.0}
    markdown = render_markdown(report)
    assert "**Failback storm**: 80 connects/s" in markdown
    assert "95th percentile 18.000 s" in markdown


def test_no_heal_no_storm() -> None:
    record = _record([], {"a": 95.0})
    record.steps = [StepRecord(30.0, "fault", E, "down")]
    report = build_report(record)
    assert report["failback_storm"] == {
        "peak_connects_per_s": None,
        "peak_at_s": None,
        "spread_s": None,
    }
    assert "Failback storm" not in render_markdown(report)
