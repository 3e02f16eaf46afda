"""The report of a fleet run, on hand-made records with known answers."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from simulators.fleet._records import (
    Arrival,
    DeviceEvent,
    DoorSample,
    RunRecord,
    SentSample,
    ShadowCheck,
    StepRecord,
)
from simulators.fleet._report import (
    NAMES_CAP,
    build_report,
    connected_over_time,
    disruption,
    fault_windows,
    percentile,
    render_markdown,
    stats,
    timeline_csv,
)

E, W = "us-east-1", "us-west-2"


def _ev(
    t: float, device: str, kind: str, region: str | None = None, detail: str = ""
) -> DeviceEvent:
    return DeviceEvent(t, device, kind, region, detail)  # type: ignore[arg-type]


def _moves(
    device: str, *, over: float, back: float | None, detect: float = 31.0
) -> list[DeviceEvent]:
    """A device on E from t=1, down at 30: detected, on W at ``over``, back on E at ``back``."""
    events = [
        _ev(0.5, device, "started"),
        _ev(1.0, device, "connected", E),
        _ev(1.2, device, "first_ack", E),
        _ev(30.0, device, "disconnected", E),
        _ev(detect, device, "detected", E),
        _ev(over - 0.1, device, "connected", W),
        _ev(over, device, "first_ack", W),
    ]
    if back is not None:
        events += [
            _ev(back - 0.2, device, "disconnected", W),
            _ev(back - 0.1, device, "connected", E),
            _ev(back, device, "first_ack", E),
        ]
    return events


def _record(**changes: object) -> RunRecord:
    """Three devices: a and b fail over and back, c never fails back."""
    record = RunRecord(
        scenario="region-outage",
        description="down, then healed",
        seed=7,
        duration_s=120.0,
        regions=(E, W),
        devices=("a", "b", "c"),
        steps=[
            StepRecord(30.0, "fault", E, "down"),
            StepRecord(40.0, "replicator", None, "stop"),
            StepRecord(90.0, "heal", E, "up"),
        ],
        events=[
            *_moves("a", over=32.0, back=100.0),
            *_moves("b", over=34.0, back=101.5, detect=30.5),
            *_moves("c", over=36.0, back=None, detect=33.0),
        ],
        arrivals=[Arrival(1.0, E, d, s) for d in ("a", "b", "c") for s in (1, 2, 3)],
        sent={"a": 3, "b": 3, "c": 3},
        final_region={"a": E, "b": E, "c": W},
        shadows=ShadowCheck(checked=3, diverged=0),
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def test_times_per_device_and_the_failures() -> None:
    report = build_report(_record())
    assert report["disruption"] == {"start_s": 30.0, "end_s": 90.0}
    assert report["present"] == 3
    assert report["detection"] == {
        "count": 3,
        "p50_s": 1.0,
        "p95_s": 3.0,
        "p99_s": 3.0,
        "max_s": 3.0,
    }
    assert report["failover"] == {
        "count": 3,
        "p50_s": 4.0,
        "p95_s": 6.0,
        "p99_s": 6.0,
        "max_s": 6.0,
    }
    assert report["failback"] == {
        "count": 2,
        "p50_s": 10.0,
        "p95_s": 11.5,
        "p99_s": 11.5,
        "max_s": 11.5,
    }
    assert report["not_failed_over"] == {"count": 0, "devices": []}
    assert report["not_failed_back"] == {"count": 1, "devices": ["c"]}
    assert report["moved"]["count"] == 3
    assert report["overlaps"] == {"count": 0, "devices": []}
    assert report["devices_final"] == {E: 2, W: 1, "none": 0}
    assert report["verdict"]["ok"] is False
    assert report["verdict"]["problems"] == ["1 of 3 devices never failed back: c"]
    assert report["scenario"] == "region-outage"
    assert report["devices"] == 3
    assert report["seed"] == 7
    assert report["duration_s"] == 120.0
    json.dumps(report)  # JSON-ready


def test_all_back_passes() -> None:
    record = _record()
    record.events += [
        _ev(99.0, "c", "disconnected", W),
        _ev(99.5, "c", "connected", E),
        _ev(100.0, "c", "first_ack", E),
    ]
    record.final_region["c"] = E
    report = build_report(record)
    assert report["verdict"] == {"ok": True, "problems": []}
    assert report["failback"]["count"] == 3
    markdown = render_markdown(report)
    assert markdown.splitlines()[2].startswith("**PASS**: all 3 devices failed over and back")


def test_first_ack_before_the_start_does_not_count() -> None:
    record = _record()
    record.events.append(_ev(10.0, "a", "first_ack", W))  # before the disruption
    record.events.append(_ev(95.0, "a", "first_ack", E))  # before... no: after the end: counts
    report = build_report(record)
    assert report["failover"]["p50_s"] == 4.0
    assert report["failback"]["p50_s"] == 5.0


def test_a_device_that_never_fails_over_and_one_never_seen() -> None:
    record = _record(devices=("a", "b", "c", "d", "e"))
    record.events += [_ev(1.0, "d", "connected", E), _ev(1.1, "d", "first_ack", E)]
    report = build_report(record)
    assert report["not_failed_over"] == {"count": 2, "devices": ["d", "e"]}
    assert report["not_failed_back"] == {"count": 3, "devices": ["c", "d", "e"]}
    assert report["devices_final"] == {E: 2, W: 1, "none": 2}
    problems = report["verdict"]["problems"]
    assert problems[0] == "2 of 5 devices never failed over: d, e"
    assert problems[1] == "3 of 5 devices never failed back: c, d, e"


def test_duplicates_and_losses() -> None:
    record = _record()
    record.arrivals = [
        Arrival(1.0, E, "a", 1),
        Arrival(1.5, E, "a", 2),
        Arrival(33.0, W, "a", 2),  # a QoS 1 redelivery in the other region
        Arrival(33.1, W, "a", 2),
        Arrival(2.0, E, "b", 1),
        Arrival(2.0, E, "b", 3),
        Arrival(3.0, E, "c", 7),  # beyond what c says it sent: delivered, not a loss's cover
    ]
    record.sent = {"a": 3, "b": 3, "c": 1}
    report = build_report(record)
    assert report["messages"] == {
        "sent": 7,
        "delivered": 5,
        "lost": 3,
        "duplicated": 2,
        "uncounted": 0,
    }
    assert "3 of 7 messages lost" in report["verdict"]["problems"]


def test_devices_whose_host_never_reported_are_a_problem_not_a_silent_gap() -> None:
    # A device host that does not answer the end of the run leaves its devices without a
    # final sent count: their arrivals are delivered, but nobody can say what they lost.
    record = _record(sent={"a": 3, "b": 3})
    report = build_report(record)
    assert report["messages"]["uncounted"] == 1
    assert report["messages"]["sent"] == 6
    assert report["messages"]["lost"] == 0
    assert not report["verdict"]["ok"]
    assert (
        "1 devices were never counted: their device host did not report what they sent, "
        "so their losses are unknown"
    ) in report["verdict"]["problems"]
    assert build_report(_record())["messages"]["uncounted"] == 0


def test_overlap_from_events_and_simultaneous_handover() -> None:
    record = _record()
    record.events += [
        _ev(50.0, "a", "connected", E),  # while still on W: two at once
        _ev(51.0, "a", "disconnected", E),
        _ev(60.0, "b", "connected", E),  # the disconnect at the same instant comes first
        _ev(60.0, "b", "disconnected", W),
        _ev(61.0, "b", "disconnected", E),
        _ev(61.5, "b", "connected", W),
    ]
    report = build_report(record)
    assert report["overlaps"] == {"count": 1, "devices": ["a"]}
    assert "1 devices were connected to two regions at once: a" in report["verdict"]["problems"]


def test_reconnecting_to_the_same_region_is_no_overlap() -> None:
    record = _record()
    record.events += [_ev(50.0, "a", "connected", W)]
    assert build_report(record)["overlaps"]["count"] == 0


def test_created_devices_are_counted_but_not_expected_to_fail_over() -> None:
    record = _record(devices=("a", "b", "c", "new-1", "new-2", "early"))
    record.events += [
        _ev(40.0, "new-1", "created"),
        _ev(45.0, "new-1", "connected", W),
        _ev(45.5, "new-1", "first_ack", W),
        _ev(40.0, "new-2", "created"),
        _ev(20.0, "early", "created"),
    ]
    record.final_region.update({"new-1": W, "new-2": None})
    report = build_report(record)
    assert report["present"] == 4  # a, b, c and early (created before the disruption)
    assert report["devices"] == 6
    assert report["created"] == {"count": 3, "never_acked": ["early", "new-2"]}
    assert report["devices_final"] == {E: 2, W: 2, "none": 2}
    assert report["failover"]["count"] == 3
    assert report["not_failed_over"]["devices"] == ["early"]


def test_door_counters_and_refusals() -> None:
    record = _record(
        doors=[
            DoorSample(0.0, W, 0, 10, {"throttled_account": 1}),
            DoorSample(1.0, W, 5, 15, {"throttled_account": 1}),
            DoorSample(31.0, W, 50, 55, {"throttled_account": 9, "certificate_unknown": 2}),
            DoorSample(31.5, W, 80, 85, {"throttled_account": 20, "certificate_unknown": 2}),
            DoorSample(0.0, E, 3, 100, {}),
            DoorSample(2.0, E, 3, 120, {"fault_down": 4}),
            DoorSample(3.0, E, 3, 5, {"fault_down": 1}),  # the door restarted: from zero
        ],
        settings={"quotas": {W: {"connect_per_s": 50}}},
    )
    record.events += [
        _ev(31.0, "a", "refused", W, "not_authorized"),
        _ev(31.2, "b", "refused", W, "not_authorized"),
        _ev(31.3, "b", "refused", E, "refused"),
        _ev(31.4, "c", "refused", None, "dns"),
    ]
    report = build_report(record)
    assert report["connects"] == {
        E: {"total": 25, "peak_per_s": 10.0, "refused": 5},
        W: {"total": 75, "peak_per_s": 60.0, "refused": 21},
    }
    assert report["refusals"]["door"] == {
        E: {"fault_down": 5},
        W: {"certificate_unknown": 2, "throttled_account": 19},
    }
    assert report["refusals"]["devices"] == {
        E: {"refused": 1},
        W: {"not_authorized": 2},
        "none": {"dns": 1},
    }
    markdown = render_markdown(report)
    assert "the secondary (us-west-2)'s CONNECT quota per account (50/s) refused these" in markdown
    assert "throttled_account x19" in markdown
    assert "the injected fault 'down'" in markdown


def test_policy_refusals_and_denials_are_counted_by_reason_and_explained() -> None:
    record = _record(
        doors=[
            DoorSample(0.0, W, 0, 0, {}, None, {}),
            DoorSample(31.0, W, 0, 2, {"policy_connect_denied": 7}, None, {}),
            DoorSample(
                32.0,
                W,
                2,
                3,
                {"policy_connect_denied": 9},
                None,
                {"policy_publish_denied": 4, "policy_subscribe_denied": 1},
            ),
            DoorSample(0.0, E, 3, 3, {}, None, {"policy_receive_denied": 2}),
            DoorSample(1.0, E, 3, 3, {}, None, {"policy_receive_denied": 2}),  # no growth
        ]
    )
    report = build_report(record)
    assert report["refusals"]["door"] == {E: {}, W: {"policy_connect_denied": 9}}
    assert report["refusals"]["denied"] == {
        W: {"policy_publish_denied": 4, "policy_subscribe_denied": 1}
    }
    markdown = render_markdown(report)
    assert "us-west-2 policy_connect_denied x9: the secondary (us-west-2)'s IoT policies" in (
        markdown
    )
    assert "**Denied by policy on admitted connections**" in markdown
    assert "us-west-2 policy_publish_denied x4: the secondary (us-west-2)'s IoT policies" in (
        markdown
    )
    assert "policy_subscribe_denied x1" in markdown
    assert "policy_receive_denied" not in markdown
    assert "no explanation" not in markdown


def test_no_denials_no_denial_section() -> None:
    report = build_report(
        _record(doors=[DoorSample(0.0, W, 0, 0, {}), DoorSample(1.0, W, 0, 1, {})])
    )
    assert report["refusals"]["denied"] == {}
    assert "Denied by policy" not in render_markdown(report)


def test_no_door_samples_gives_zeros_for_every_region() -> None:
    report = build_report(_record())
    assert report["connects"] == {
        E: {"total": 0, "peak_per_s": 0.0, "refused": 0},
        W: {"total": 0, "peak_per_s": 0.0, "refused": 0},
    }


def test_shadows_and_replicator_lag() -> None:
    record = _record(
        shadows=ShadowCheck(checked=3, diverged=1, diverged_devices=("b",)),
        replicator_lag_s=[(1.0, 0.5), (2.0, 4.0), (3.0, 1.0)],
    )
    report = build_report(record)
    assert report["shadows"] == {"checked": 3, "diverged": 1, "devices": ["b"]}
    assert report["replicator"] == {
        "samples": 3,
        "p50_s": 1.0,
        "p95_s": 4.0,
        "max_s": 4.0,
        "last_s": 1.0,
    }
    assert "1 of 3 shadows diverged" in report["verdict"]["problems"]


def test_no_disruption_means_nobody_moves() -> None:
    record = _record(
        steps=[
            StepRecord(20.0, "fault", E, "control-plane-down"),
            StepRecord(30.0, "create_devices", E, "50"),
            StepRecord(80.0, "heal", E, "up"),
        ],
        events=[_ev(1.0, d, "connected", E) for d in ("a", "b", "c")],
        final_region={"a": E, "b": E, "c": E},
    )
    report = build_report(record)
    assert report["disruption"] == {"start_s": None, "end_s": None}
    assert report["failover"]["count"] == 0
    assert report["failover"]["p50_s"] is None
    assert report["not_failed_over"]["count"] == 0
    assert report["verdict"] == {"ok": True, "problems": []}
    assert render_markdown(report).splitlines()[2].startswith("**PASS**: no device of 3 moved")
    record.events += [_ev(49.0, "b", "disconnected", E), _ev(50.0, "b", "connected", W)]
    report = build_report(record)
    assert report["verdict"]["problems"] == [
        "1 devices moved away from the primary although it was never disrupted: b"
    ]


def test_disruption_rules() -> None:
    s = StepRecord
    assert disruption([s(10, "fault", W, "down")], E).start is None
    assert disruption([s(10, "fault", E, "degraded")], E).start is None
    assert disruption([s(10, "fault", E, "control-plane-down")], E).start is None
    for mode in ("down", "blackhole", "partial"):
        assert disruption([s(10, "fault", E, mode)], E).start == 10
    flips = disruption([s(10, "dns", W, "cname"), s(50, "dns", E, "cname")], E)
    assert (flips.start, flips.end) == (10, 50)
    assert disruption([s(10, "dns", E, "cname")], E).start is None
    flapping = disruption(
        [
            s(80, "heal", E, "up"),
            s(30, "fault", E, "down"),
            s(40, "heal", E, "up"),
            s(50, "fault", E, "down"),
            s(85, "heal", W, "up"),
        ],
        E,
    )
    assert (flapping.start, flapping.end) == (30, 80)
    assert disruption([s(5, "heal", E, "up"), s(30, "fault", E, "down")], E).end is None
    assert repr(flapping) == "Disruption(start=30, end=80, share=1.0)"
    assert disruption([s(10, "fault", E, "blackhole 30%")], E).share == 0.3
    assert disruption([s(10, "fault", E, "refuse 12.5%")], E).share == 0.125
    assert disruption([s(10, "fault", E, "reset")], E).share == 1.0
    assert disruption([s(10, "fault", E, "degraded 30%")], E).start is None


def test_a_fault_on_a_share_of_the_devices_expects_only_those_that_detected_it() -> None:
    steps = [StepRecord(30.0, "fault", E, "blackhole 50%"), StepRecord(90.0, "heal", E, "up")]
    untouched = [
        _ev(0.5, "d", "started"),
        _ev(1.0, "d", "connected", E),
        _ev(1.2, "d", "first_ack", E),
    ]
    record = _record(steps=steps, devices=("a", "b", "c", "d"))
    record.events = [*record.events, *untouched]
    record.final_region = {**record.final_region, "d": E}
    report = build_report(record)
    assert report["present"] == 3  # d kept its primary: nothing is expected of it
    assert report["failover"]["count"] == 3
    assert report["not_failed_back"]["devices"] == ["c"]  # c is still judged
    record.steps = [StepRecord(30.0, "fault", E, "blackhole"), steps[1]]
    whole = build_report(record)
    assert whole["present"] == 4
    assert whole["not_failed_over"]["devices"] == ["d"]


def test_no_end_means_failback_is_not_expected() -> None:
    record = _record(steps=[StepRecord(30.0, "fault", E, "down")])
    report = build_report(record)
    assert report["failback"]["count"] == 0
    assert report["not_failed_back"]["count"] == 0
    assert report["verdict"]["ok"] is True
    assert "failed over (failover" in render_markdown(report)
    assert "given back never" in render_markdown(report)


def test_names_are_capped() -> None:
    devices = tuple(f"d{i:03}" for i in range(NAMES_CAP + 10))
    record = _record(devices=devices, events=[], final_region={})
    report = build_report(record)
    assert report["not_failed_over"]["count"] == NAMES_CAP + 10
    assert len(report["not_failed_over"]["devices"]) == NAMES_CAP
    assert report["verdict"]["problems"][0].endswith("and 10 more")


def test_percentiles_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert stats([0.12345, 2.0]) == {
        "count": 2,
        "p50_s": 0.123,
        "p95_s": 2.0,
        "p99_s": 2.0,
        "max_s": 2.0,
    }
    assert stats([]) == {"count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1))
def test_percentiles_are_monotone_and_bounded(values: list[float]) -> None:
    p = [percentile(values, q) for q in (0, 50, 95, 99, 100)]
    assert p == sorted(p)  # type: ignore[type-var]
    assert p[0] == min(values)
    assert p[-1] == max(values)
    assert all(v in values for v in p)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.tuples(st.integers(0, 20), st.lists(st.integers(1, 20), max_size=40)),
    )
)
def test_delivered_plus_lost_is_sent(per_device: dict[str, tuple[int, list[int]]]) -> None:
    record = _record(devices=tuple(per_device), events=[], steps=[])
    record.sent = {d: sent for d, (sent, _) in per_device.items()}
    record.arrivals = [
        Arrival(1.0, E, d, seq)
        for d, (sent, seqs) in per_device.items()
        for seq in seqs
        if seq <= sent
    ]
    m = build_report(record)["messages"]
    assert m["delivered"] + m["lost"] == m["sent"]
    assert m["delivered"] + m["duplicated"] == len(record.arrivals)
    assert m["lost"] >= 0


def test_fault_windows() -> None:
    record = _record(
        steps=[
            StepRecord(10.0, "fault", E, "blackhole"),
            StepRecord(20.0, "fault", E, "down"),
            StepRecord(25.0, "fault", E, "control-plane-down"),
            StepRecord(30.0, "heal", E, "up"),
            StepRecord(40.0, "fault", W, "partial"),
        ],
        duration_s=60.0,
    )
    assert fault_windows(record) == [
        (10.0, 20.0, E, "blackhole"),
        (20.0, 30.0, E, "down"),
        (25.0, 30.0, E, "control-plane-down"),
        (40.0, 60.0, W, "partial"),
    ]


def test_connected_over_time() -> None:
    record = _record()
    counts = connected_over_time(record, [0.0, 1.0, 30.0, 35.8, 35.9, 100.0, 119.0])
    assert counts[E] == [0, 3, 0, 0, 0, 1, 2]
    assert counts[W] == [0, 0, 0, 2, 3, 2, 1]


def test_timeline_csv() -> None:
    record = _record(
        duration_s=5.0,
        steps=[StepRecord(2.0, "fault", E, "down"), StepRecord(4.0, "heal", E, "up")],
        doors=[
            DoorSample(0.0, E, 0, 0),
            DoorSample(0.9, E, 2, 2),
            DoorSample(2.5, E, 0, 5),
        ],
        sent_samples=[SentSample(1.0, 3), SentSample(3.0, 9)],
        arrivals=[
            Arrival(1.0, E, "a", 1),
            Arrival(1.0, E, "a", 1),
            Arrival(2.5, W, "b", 1),
        ],
    )
    rows = list(csv.DictReader(io.StringIO(timeline_csv(record))))
    assert [r["t"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert list(rows[0]) == [
        "t",
        f"connected_{E}",
        f"connected_{W}",
        f"connects_{E}",
        f"connects_{W}",
        "sent",
        "delivered",
        "faults",
    ]
    assert [r[f"connected_{E}"] for r in rows] == ["0", "3", "3", "3", "3", "3"]
    assert [r[f"connects_{E}"] for r in rows] == ["0", "2", "0", "3", "0", "0"]
    assert [r["sent"] for r in rows] == ["0", "3", "3", "9", "9", "9"]
    assert [r["delivered"] for r in rows] == ["0", "1", "1", "2", "2", "2"]
    assert [r["faults"] for r in rows] == ["", "", f"{E}:down", f"{E}:down", "", ""]


def test_markdown_reads_verdict_first_and_names_everything() -> None:
    record = _record(notes=["mosquitto is not installed"], replicator_lag_s=[(1.0, 2.5)])
    markdown = render_markdown(build_report(record))
    lines = markdown.splitlines()
    assert lines[0] == "# Fleet run: region-outage"
    assert lines[2] == "**FAIL**: 1 of 3 devices never failed back: c"
    assert "| failover | 3 | 4.000 | 6.000 | 6.000 | 6.000 |" in markdown
    assert "| failback | 2 | 10.000 | 11.500 | 11.500 | 11.500 |" in markdown
    assert "| detection | 3 | 1.000 | 3.000 | 3.000 | 3.000 |" in markdown
    assert "**Messages**: 9 sent, 9 delivered, 0 lost, 0 duplicated" in markdown
    assert "| us-east-1 | 0 | 0 | 0 | - | 2 |" in markdown
    assert "| not connected | | | | | 0 |" in markdown
    assert "**1 devices never failed back**: c" in markdown
    assert "- 30.0 s: fault us-east-1 down" in markdown
    assert "- 40.0 s: replicator stop" in markdown
    assert "- mosquitto is not installed" in markdown
    assert "max 2.500 s over 1 samples" in markdown
    assert "**Shadows**: 3 checked, 0 diverged." in markdown
    assert "connected.png, cdf.png, messages.png" in markdown
    assert "primary disrupted at 30 s, given back at 90 s." in markdown
