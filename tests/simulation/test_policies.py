"""A policy the replicator got wrong locks the fleet out of the secondary, and the report says so.

The in-memory doors authorize by each region's IoT policies, as the real
doors (and AWS IoT) do. Here the secondary's device policy names the
primary's region in its ARNs, as a missed rewrite would leave it: every
device is refused there when the primary goes down, and the report counts
the refusals under the door's reason and explains them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators.controlplane._bulk import device_policy
from simulators.fleet import _memory
from simulators.fleet._memory import run_memory_scenario
from simulators.fleet._report import render_markdown
from simulators.fleet._scenario import builtin_scenarios, with_devices

if TYPE_CHECKING:
    import pytest

    from simulators.controlplane._bulk import BulkPolicy

DEVICES = 20


def test_a_policy_naming_the_primary_refuses_every_device_in_the_secondary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = with_devices(builtin_scenarios()["region-outage"], DEVICES)
    primary, secondary = scenario.regions

    def unrewritten(region: str, account_id: str) -> BulkPolicy:
        del region  # the bug: every region gets the primary's ARNs
        return device_policy(primary, account_id)

    monkeypatch.setattr(_memory, "device_policy", unrewritten)
    record, report, run = run_memory_scenario(scenario)

    assert not report["verdict"]["ok"]
    assert report["not_failed_over"]["count"] == DEVICES
    refused = report["refusals"]["door"]
    assert refused[secondary].get("policy_connect_denied", 0) >= DEVICES
    assert "policy_connect_denied" not in refused[primary]  # the primary's ARNs are right there
    assert run.stage.door.admitted[secondary] == 0
    assert any("never failed over" in problem for problem in report["verdict"]["problems"])
    markdown = render_markdown(report)
    assert f"{secondary} policy_connect_denied x" in markdown
    assert "IoT policies for the certificate do not allow iot:Connect" in markdown
    assert all(e.region == primary for e in record.events if e.kind == "connected")


def test_the_rewritten_policy_admits_every_device_in_the_secondary() -> None:
    scenario = with_devices(builtin_scenarios()["region-outage"], DEVICES)
    _, report, run = run_memory_scenario(scenario)

    assert report["verdict"]["ok"], report["verdict"]["problems"]
    assert all("policy_connect_denied" not in r for r in report["refusals"]["door"].values())
    assert run.stage.door.admitted[scenario.regions[1]] >= DEVICES
