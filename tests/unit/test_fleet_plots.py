"""The plots are written as PNG files, with and without a disruption."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.fleet._records import (
    Arrival,
    DeviceEvent,
    DoorSample,
    RunRecord,
    SentSample,
    StepRecord,
)
from simulators.fleet._report import PLOT_FILES, build_report

if TYPE_CHECKING:
    from pathlib import Path

E, W = "us-east-1", "us-west-2"
PNG = b"\x89PNG\r\n\x1a\n"


def _record(steps: list[StepRecord]) -> RunRecord:
    events = []
    for i, device in enumerate(("a", "b")):
        events += [
            DeviceEvent(1.0, device, "connected", E),
            DeviceEvent(1.1, device, "first_ack", E),
            DeviceEvent(10.0, device, "disconnected", E),
            DeviceEvent(11.0 + i, device, "connected", W),
            DeviceEvent(11.5 + i, device, "first_ack", W),
            DeviceEvent(25.0 + i, device, "disconnected", W),
            DeviceEvent(25.5 + i, device, "connected", E),
            DeviceEvent(26.0 + i, device, "first_ack", E),
        ]
    return RunRecord(
        scenario="region-outage",
        duration_s=40.0,
        regions=(E, W),
        devices=("a", "b"),
        steps=steps,
        events=events,
        arrivals=[Arrival(float(s), E, "a", s) for s in range(1, 30)],
        sent={"a": 30},
        sent_samples=[SentSample(float(t), t) for t in range(31)],
        doors=[DoorSample(float(t), W, 0, t) for t in range(40)],
    )


def test_plots_are_pngs(tmp_path: Path) -> None:
    from simulators.fleet._plots import write_plots

    record = _record(
        [
            StepRecord(10.0, "fault", E, "down"),
            StepRecord(12.0, "create_devices", E, "5"),
            StepRecord(20.0, "heal", E, "up"),
        ]
    )
    paths = write_plots(record, build_report(record), tmp_path / "out")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG), path
        assert len(data) > 5000, path


def test_plots_without_a_disruption(tmp_path: Path) -> None:
    from simulators.fleet._plots import write_plots

    record = _record([StepRecord(5.0, "fault", E, "control-plane-down")])
    record.events = []
    paths = write_plots(record, build_report(record), tmp_path)
    assert all(p.read_bytes().startswith(PNG) for p in paths)


def test_no_pyplot_state() -> None:
    import simulators.fleet._plots as plots

    source = plots.__file__
    assert source is not None
    with open(source, encoding="utf-8") as handle:
        text = handle.read()
    assert "import pyplot" not in text
    assert "matplotlib.pyplot" not in text
    assert "matplotlib.use(" not in text
