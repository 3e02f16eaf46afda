"""A device-side blackhole on the real local regions: the fleet moves, the door is never faulted.

The run is ``iotdr sim run``'s own (:func:`~simulators.fleet._driver.run_fleet`:
the local regions, device-host processes with real agents over paho and
mTLS, the timeline player), kept short: six devices, a 22 s timeline. Its
stage, the local regions, also reads the primary's door at every sample (about
once a second) through the door's admin endpoint (``GET /fault``): what a
drill against a real account relies on is that nothing but the devices' side
moved.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from typing import TYPE_CHECKING, ClassVar

import pytest

from simulators.fleet import _driver
from simulators.fleet._driver import RunOptions, run_fleet
from simulators.fleet._regions_stage import RegionsStage
from simulators.fleet._scenario import parse_scenario

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.fleet._records import DoorSample

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

PRIMARY, SECONDARY = "us-east-1", "us-west-2"
DEVICES = 6
# The fleet is on the secondary about 3 s after the fault (two failed 1 s probes, the
# connect); after the heal, the first 2 s failback probe and the next (+-20 % jitter) close
# the 1.5 s window: back within 5 s, well before the end.
FAULT_AT, HEAL_AT, DURATION = 3, 11, 22

_SCENARIO = f"""\
name: device-blackhole-quick
description: the devices' way to the primary goes silent, the door stays up
devices: {DEVICES}
duration_s: {DURATION}
regions: [{PRIMARY}, {SECONDARY}]
fleet: {{telemetry_interval_s: 1.0, shadow_interval_s: 5, start_spread_s: 1}}
agent:
  failover: {{probe_interval_s: 1, failure_threshold: 2, failback_probe_interval_s: 2,
             failback_probe_depth: tcp, stability_window_s: 1.5,
             failback_spread_s: 0}}  # failback at once, not spread over a window
  probe: {{timeout_s: 1}}
  mqtt: {{keepalive_s: 30, connect_timeout_s: 2}}
timeline:
  - {{at: {FAULT_AT}, fault: {{side: devices, region: {PRIMARY}, mode: blackhole}}}}
  - {{at: {HEAL_AT}, heal: {{region: {PRIMARY}}}}}
"""


class _WatchedStage(RegionsStage):
    """The local regions of the run, the primary's door fault read at every sample."""

    door_faults: ClassVar[list[str]] = []

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        self.door_faults.append(await asyncio.to_thread(self._door_fault))
        return await super().sample(t)

    def _door_fault(self) -> str:
        admin = self.running().endpoints()["regions"][PRIMARY]["gateway_admin_url"]
        with urllib.request.urlopen(f"{admin}/fault", timeout=5) as answer:
            return str(json.load(answer)["fault"]["mode"])


@pytest.mark.timeout(120)
def test_a_device_side_blackhole_moves_the_fleet_and_leaves_the_door_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_driver, "RegionsStage", _WatchedStage)
    monkeypatch.setattr(_WatchedStage, "door_faults", [])
    options = RunOptions(
        scenario=parse_scenario(_SCENARIO, source="quick.yaml"),
        report_dir=tmp_path / "report",
        state_dir=tmp_path / "state",
        processes=2,
        broker="mosquitto",
    )

    report = run_fleet(options)

    # The door of the primary was never faulted: up at every sample, no fault refusals.
    assert len(_WatchedStage.door_faults) >= DURATION - 3  # about one a second
    assert set(_WatchedStage.door_faults) == {"up"}
    for region, reasons in report["refusals"]["door"].items():
        assert not [r for r in reasons if r.startswith("fault")], region
    # The step was carried out on the devices' side, and says so.
    assert [(s["action"], s["detail"]) for s in report["steps"]] == [
        ("fault", "blackhole"),
        ("heal", "up"),
    ]
    assert any("devices' side" in note for note in report["notes"])
    # The devices saw silence, not errors: their connects to the primary timed out.
    kinds = report["refusals"]["devices"].get(PRIMARY, {})
    assert set(kinds) <= {"timeout", "closed"}, kinds  # closed: the door's 1/s per client ID
    # Yet the whole fleet moved to the secondary during the fault, and came back.
    assert report["failover"]["count"] == report["failback"]["count"] == DEVICES
    assert report["not_failed_over"]["count"] == report["not_failed_back"]["count"] == 0
    assert report["devices_final"] == {PRIMARY: DEVICES, SECONDARY: 0, "none": 0}
    assert report["messages"]["lost"] == 0
    assert report["verdict"]["ok"], report["verdict"]["problems"]
    assert (tmp_path / "report" / "report.md").read_text().splitlines()[2].startswith("**PASS")
