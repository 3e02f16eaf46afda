"""The fleet bench's scenario for N devices: room for the bound, a boot under the quota."""

from __future__ import annotations

from bench.fleet import BOOT_HEADROOM, MESSAGE_RATE, SHADOW_RATE, stretched
from device_agent import FailoverConfig
from simulators.fleet._scenario import (
    FaultStep,
    HealStep,
    builtin_scenarios,
    resolved_agent,
    with_devices,
)


def test_ten_thousand_devices_get_an_outage_twice_the_bound_and_a_boot_under_the_quota() -> None:
    base = builtin_scenarios()["fleet-scale"]  # both quotas 100 CONNECT/s
    scenario = stretched(with_devices(base, 10_000))

    fault, heal = scenario.timeline
    assert isinstance(fault, FaultStep)
    assert isinstance(heal, HealStep)
    assert heal.at - fault.at == 2 * 10_000 / 100
    failover = FailoverConfig(**resolved_agent(scenario)["failover"])  # type: ignore[arg-type]
    tail = failover.stability_window_s + failover.failback_spread_s + 100 + 60
    assert scenario.duration_s == heal.at + tail
    assert scenario.fleet.start_spread_s == BOOT_HEADROOM * 10_000 / 100
    assert 10_000 / scenario.fleet.start_spread_s < 100  # boots under the primary's quota
    assert scenario.fleet.telemetry_interval_s == base.fleet.telemetry_interval_s  # 10 s
    assert scenario.fleet.shadow_interval_s == base.fleet.shadow_interval_s  # 300 s


def test_twenty_thousand_devices_send_no_more_than_ten_thousand_did() -> None:
    base = builtin_scenarios()["fleet-scale"]
    scenario = stretched(with_devices(base, 20_000))

    assert scenario.fleet.telemetry_interval_s == 20.0
    assert 20_000 / scenario.fleet.telemetry_interval_s == MESSAGE_RATE
    assert scenario.fleet.shadow_interval_s == 600.0
    assert 20_000 / scenario.fleet.shadow_interval_s == SHADOW_RATE


def test_a_small_fleet_keeps_the_scenario_as_written() -> None:
    base = builtin_scenarios()["fleet-scale"]
    scenario = stretched(with_devices(base, 100))

    assert scenario.timeline == base.timeline
    assert scenario.duration_s == base.duration_s
    assert scenario.fleet == base.fleet
