"""Two shards of one fleet against ONE set of local regions, merged like one run.

``iotdr sim regions up`` runs the regions (its own process, stopped by PID
after); two ``iotdr sim run --shard I/2 --regions STATE_DIR`` processes run
at once with the same ``--start-at``; ``iotdr sim report merge`` merges
their report directories. The merged totals are the sums of the shards',
and the merged report passes as one run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from device_agent import FailoverConfig

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

_IOTDR = [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim"]

_SCENARIO = """\
name: sharded
description: the primary goes down while devices are created, then recovers
devices: 24
duration_s: 24
regions: [us-east-1, us-west-2]
fleet: {telemetry_interval_s: 1.0, shadow_interval_s: 5, start_spread_s: 2}
agent: {failover: {stability_window_s: 2, failback_probe_interval_s: 3%s}}
timeline:
  - {at: 3, fault: {region: us-east-1, mode: down}}
  - {at: 4, create_devices: 3}
  - {at: 9, heal: {region: us-east-1}}
"""
# The failback: the first probe after the heal (3 s, +-20 % jitter), the next one closes the
# 2 s window, the spread, the connect: about 9 s after the heal at 9, 12 at most, well before 24.
# A short failback spread where the agent has one (a policy being added; 60 s by default).
_SPREAD = (
    ", failback_spread_s: 1"
    if "failback_spread_s" in {f.name for f in dataclasses.fields(FailoverConfig)}
    else ""
)


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[Path]:
    """``iotdr sim regions up`` on free ports; its state directory while it runs."""
    state = tmp_path / "regions"
    log = (tmp_path / "regions.log").open("wb")
    ports = ["--mqtt-port", "0", "--mqtts-port", "0", "--data-port", "0"]
    ports += ["--control-plane-port", "0", "--dns-port", "0"]
    process = subprocess.Popen(
        [*_IOTDR, "regions", "up", "--state-dir", str(state), *ports],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (state / "regions.json").exists():
            assert process.poll() is None, (tmp_path / "regions.log").read_text()
            assert time.monotonic() < deadline, "the regions did not start in 60 s"
            time.sleep(0.2)
        yield state
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.mark.timeout(150)
def test_two_shards_merge_to_the_totals_of_one_run(tmp_path: Path, regions: Path) -> None:
    scenario = tmp_path / "sharded.yaml"
    scenario.write_text(_SCENARIO % _SPREAD)
    # Time enough to provision and connect, on a busy machine (11 to 13 s at a load average of 8).
    start_at = time.time() + 20
    shards = []
    for index in range(2):
        command = [
            *_IOTDR, "run", "--scenario", str(scenario), "--shard", f"{index}/2",
            "--regions", str(regions), "--start-at", f"{start_at:.3f}", "--processes", "1",
            "--state-dir", str(tmp_path / f"state-{index}"),
            "--report-dir", str(tmp_path / f"report-{index}"), "--json",
        ]  # fmt: skip
        shards.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outcomes = [shard.communicate(timeout=120) for shard in shards]
    for shard, (_, stderr) in zip(shards, outcomes, strict=True):
        assert shard.returncode in {0, 1}, stderr
    parts = [json.loads((tmp_path / f"report-{i}" / "report.json").read_text()) for i in (0, 1)]

    merged_dir = tmp_path / "merged"
    result = subprocess.run(
        [*_IOTDR, "report", "merge", str(tmp_path / "report-0"), str(tmp_path / "report-1"),
         "--report-dir", str(merged_dir), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr, parts)
    merged = json.loads((merged_dir / "report.json").read_text())
    assert json.loads(result.stdout) == merged

    # Each shard ran its contiguous half (and half of the created devices); together, the fleet.
    assert [p["devices"] for p in parts] == [13, 14]  # 12 + 1 and 12 + 2 created
    assert merged["devices"] == 27
    for field in ("sent", "delivered", "lost", "duplicated"):
        assert merged["messages"][field] == sum(p["messages"][field] for p in parts), field
    for kind in ("failover", "failback"):
        assert merged[kind]["count"] == sum(p[kind]["count"] for p in parts) == 24
    assert merged["shadows"]["checked"] == sum(p["shadows"]["checked"] for p in parts)
    # One owner for the region steps: the door went down once, at the same time for both.
    assert [s["action"] for s in merged["steps"]] == ["fault", "create_devices", "heal"]
    assert merged["steps"][1]["detail"] == "3"
    region_steps = [s["t"] for s in parts[1]["steps"] if s["action"] != "create_devices"]
    assert region_steps == [3.0, 9.0]  # shard 1 records the owner's steps at their plan
    assert [s["t"] for s in parts[0]["steps"]] == pytest.approx([3.0, 4.0, 9.0], abs=0.5)
    assert parts[0]["detection"]["count"] == parts[1]["detection"]["count"] == 12
    # The doors are shared: every shard saw the whole fleet's connects, the merge once.
    assert merged["connects"] == parts[0]["connects"]
    assert merged["settings"]["shard"] == {"count": 2, "merged": True}
    assert not [n for n in merged["notes"] if "started late" in n]
    # And the merged report passes as one run of 24 devices would.
    assert merged["verdict"] == {"ok": True, "problems": []}, merged["verdict"]
    assert merged["messages"]["lost"] == 0
    assert (merged_dir / "report.md").read_text().startswith("# Fleet run: sharded\n\n**PASS**")
    assert {"cdf.png", "connected.png", "messages.png", "record.json.gz"} <= {
        p.name for p in merged_dir.iterdir()
    }
