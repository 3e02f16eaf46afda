"""Scenario files: the issue's example and every built-in parse; errors name line and field."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from device_agent._config import AgentConfig, DiscoveryConfig, IdentityConfig
from simulators._errors import SimulatorError
from simulators.fleet._scenario import (
    DEFAULT_SCENARIO,
    FAULT_MODES,
    CreateDevicesStep,
    DeviceFaultStep,
    DnsStep,
    FaultStep,
    FleetSettings,
    HealStep,
    ReplicatorStep,
    Scenario,
    ScenarioError,
    apply_agent_overrides,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
    region_settings,
    resolved_agent,
    scenario_settings,
    with_devices,
)

EXAMPLE = """\
name: primary-blackhole
description: the primary goes silent for a minute, then recovers
devices: 500                      # default when --devices is not given
duration_s: 150
regions: [us-east-1, us-west-2]   # primary first
replication: complete             # complete | jitr | off
fleet: {telemetry_interval_s: 1.0, shadow_interval_s: 10}
agent: {}                         # overrides of the agent's settings, same names as agent.toml
quotas: {}                        # control plane API=TPS and door CONNECT quotas per region
timeline:                         # seconds from the start; fault modes as in `iotdr sim fault`
  - {at: 20, fault: {region: us-east-1, mode: blackhole}}
  - {at: 25, create_devices: 50}    # new devices registered in the primary only
  - {at: 30, replicator: stop}      # stop | start
  - {at: 60, replicator: start}
  - {at: 80, heal: {region: us-east-1}}
  - {at: 120, dns: {cname: us-east-1}}   # point the devices' CNAME at a region by hand
"""

EXPECTED_BUILTINS = {
    "region-outage",
    "blackhole",
    "partial-partition",
    "dns-flip",
    "flapping",
    "jitr-first-connect",
    "replication-lag",
    "reconnect-storm",
    "control-plane-outage",
    "device-blackhole",
    "fleet-scale",
}


def _agent_config() -> AgentConfig:
    here = Path("x.pem")
    return AgentConfig(
        identity=IdentityConfig(client_id="d-1", cert_path=here, key_path=here, ca_path=here),
        discovery=DiscoveryConfig(name="iot.iotdr.test"),
    )


def test_the_issue_example_parses_to_typed_steps() -> None:
    scenario = parse_scenario(EXAMPLE, source="example.yaml")
    assert scenario == Scenario(
        name="primary-blackhole",
        description="the primary goes silent for a minute, then recovers",
        devices=500,
        duration_s=150.0,
        regions=("us-east-1", "us-west-2"),
        replication="complete",
        fleet=FleetSettings(telemetry_interval_s=1.0, shadow_interval_s=10.0),
        agent={},
        quotas={},
        timeline=(
            FaultStep(at=20.0, region="us-east-1", mode="blackhole"),
            CreateDevicesStep(at=25.0, count=50),
            ReplicatorStep(at=30.0, action="stop"),
            ReplicatorStep(at=60.0, action="start"),
            HealStep(at=80.0, region="us-east-1"),
            DnsStep(at=120.0, cname="us-east-1"),
        ),
    )
    assert scenario.primary == "us-east-1"
    assert isinstance(scenario.duration_s, float)
    assert isinstance(scenario.fleet.shadow_interval_s, float)


def test_optional_keys_take_their_defaults() -> None:
    scenario = parse_scenario(
        "name: n\ndevices: 3\nduration_s: 10\nregions: [a, b]\ntimeline: []\n"
    )
    assert scenario.description == ""
    assert scenario.replication == "complete"
    assert scenario.fleet == FleetSettings()
    assert scenario.agent == {}
    assert scenario.quotas == {}
    assert scenario.timeline == ()


@pytest.mark.parametrize("written", ["off", "'off'", "complete", "jitr"])
def test_replication_is_the_word_written(written: str) -> None:
    # YAML 1.1 reads a bare ``off`` as false; the scenario means the word.
    scenario = parse_scenario(BASE + f"replication: {written}\ntimeline: []\n")
    assert scenario.replication == written.strip("'")


def test_replication_false_is_not_a_mode() -> None:
    with pytest.raises(ScenarioError, match="unknown replication"):
        parse_scenario(BASE + "replication: false\ntimeline: []\n")


def test_every_builtin_parses_and_fits_its_duration() -> None:
    scenarios = builtin_scenarios()
    assert set(scenarios) == EXPECTED_BUILTINS
    assert DEFAULT_SCENARIO == "region-outage"
    for name, scenario in scenarios.items():
        assert scenario.name == name
        assert scenario.description
        assert "\n" not in scenario.description
        assert 100 <= scenario.devices <= 1000
        assert scenario.duration_s <= 300
        heals = [s.at for s in scenario.timeline if isinstance(s, HealStep | DnsStep)]
        if heals:  # room to fail back after the last recovery
            assert scenario.duration_s - max(heals) >= 60, name
        config = apply_agent_overrides(_agent_config(), resolved_agent(scenario))
        assert config.failover.stability_window_s <= 30


def test_builtins_say_what_they_claim() -> None:
    s = builtin_scenarios()
    assert s["region-outage"].devices == 1000
    assert s["region-outage"].timeline[0] == FaultStep(at=30.0, region="us-east-1", mode="down")
    assert isinstance(s["blackhole"].timeline[0], FaultStep)
    assert s["blackhole"].timeline[0].mode == "blackhole"
    assert s["partial-partition"].timeline[0].mode == "partial"  # type: ignore[union-attr]
    assert all(isinstance(x, DnsStep) for x in s["dns-flip"].timeline)
    assert s["dns-flip"].agent["failover"]["dr_mode"] is True
    downs = [x for x in s["flapping"].timeline if isinstance(x, FaultStep)]
    assert len(downs) >= 3
    assert s["jitr-first-connect"].replication == "jitr"
    assert any(isinstance(x, CreateDevicesStep) for x in s["jitr-first-connect"].timeline)
    lag = s["replication-lag"].timeline
    assert isinstance(lag[0], CreateDevicesStep)
    assert isinstance(lag[1], FaultStep)
    assert lag[0].at < lag[1].at
    storm = s["reconnect-storm"].quotas["us-west-2"]
    assert storm.connect_per_s is not None
    assert storm.connect_per_s < 100
    outage = s["control-plane-outage"].timeline
    faults = [step for step in outage if isinstance(step, FaultStep)]
    assert [f.mode for f in faults] == ["control-plane-down"]
    created = [step for step in outage if isinstance(step, CreateDevicesStep)]
    assert created
    assert created[0].at < faults[0].at
    device = s["device-blackhole"].timeline
    assert device[0] == DeviceFaultStep(at=30.0, region="us-east-1", mode="blackhole")
    assert device[1] == HealStep(at=90.0, region="us-east-1", side="devices")


def test_load_scenario_by_name_and_by_path(tmp_path: Path) -> None:
    assert load_scenario("blackhole") == builtin_scenarios()["blackhole"]
    path = tmp_path / "mine.yaml"
    path.write_text(EXAMPLE)
    assert load_scenario(str(path)).name == "primary-blackhole"


def test_load_scenario_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario("no-such-scenario")
    message = str(info.value)
    assert "no-such-scenario" in message
    assert "region-outage" in message
    assert "reconnect-storm" in message
    assert info.value.exit_code == 2
    assert isinstance(info.value, SimulatorError)


def test_load_scenario_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.yaml.*cannot read"):
        load_scenario(str(tmp_path / "missing.yaml"))


def test_with_devices() -> None:
    scenario = builtin_scenarios()["blackhole"]
    assert with_devices(scenario, 7).devices == 7
    assert with_devices(scenario, 7).timeline == scenario.timeline
    for bad in (0, -1, True):
        with pytest.raises(ScenarioError, match="--devices"):
            with_devices(scenario, bad)


BASE = """\
name: t
devices: 10
duration_s: 100
regions: [us-east-1, us-west-2]
"""

# (yaml appended after BASE or whole text, line, field path, words in the message)
ERRORS: list[tuple[str, str, int, str, str]] = [
    (
        "unknown fault mode",
        BASE + "timeline:\n  - {at: 5, fault: {region: us-east-1, mode: melt}}\n",
        6,
        "timeline[0].fault.mode",
        "unknown fault mode 'melt' (known: down, blackhole",
    ),
    (
        "unknown region in a fault",
        BASE + "timeline:\n  - {at: 5, heal: {region: us-east-1}}\n"
        "  - {at: 6, fault: {region: eu-west-1, mode: down}}\n",
        7,
        "timeline[1].fault.region",
        "'eu-west-1' is not one of this scenario's",
    ),
    (
        "unknown region in dns",
        BASE + "timeline:\n  - {at: 5, dns: {cname: nowhere}}\n",
        6,
        "timeline[0].dns.cname",
        "nowhere",
    ),
    (
        "unknown region in heal",
        BASE + "timeline:\n  - {at: 5, heal: {region: nowhere}}\n",
        6,
        "timeline[0].heal.region",
        "nowhere",
    ),
    ("unknown top key", BASE + "timeline: []\ncolour: red\n", 6, "colour", "unknown key"),
    (
        "unknown step key",
        BASE + "timeline:\n  - {at: 5, heal: {region: us-east-1}, oops: 1}\n",
        6,
        "timeline[0].oops",
        "unknown key",
    ),
    (
        "unknown key inside fault",
        BASE + "timeline:\n  - {at: 5, fault: {region: us-east-1, mode: down, x: 1}}\n",
        6,
        "timeline[0].fault.x",
        "unknown key",
    ),
    (
        "at after the end",
        BASE + "timeline:\n  - {at: 101, heal: {region: us-east-1}}\n",
        6,
        "timeline[0].at",
        "after the end",
    ),
    (
        "negative at",
        BASE + "timeline:\n  - {at: -1, heal: {region: us-east-1}}\n",
        6,
        "timeline[0].at",
        "zero or more",
    ),
    (
        "at is a bool",
        BASE + "timeline:\n  - {at: true, heal: {region: us-east-1}}\n",
        6,
        "timeline[0].at",
        "must be a number",
    ),
    (
        "steps out of order",
        BASE + "timeline:\n  - {at: 50, heal: {region: us-east-1}}\n"
        "  - {at: 40, heal: {region: us-east-1}}\n",
        7,
        "timeline[1].at",
        "time order",
    ),
    (
        "step with two actions",
        BASE + "timeline:\n  - {at: 5, heal: {region: us-east-1}, replicator: stop}\n",
        6,
        "timeline[0]",
        "exactly one of",
    ),
    (
        "step with no action",
        BASE + "timeline:\n  - {at: 5}\n",
        6,
        "timeline[0]",
        "found none",
    ),
    (
        "step without at",
        BASE + "timeline:\n  - {replicator: stop}\n",
        6,
        "timeline[0]",
        "missing at",
    ),
    (
        "replicator action",
        BASE + "timeline:\n  - {at: 5, replicator: pause}\n",
        6,
        "timeline[0].replicator",
        "unknown replicator action 'pause'",
    ),
    (
        "create_devices zero",
        BASE + "timeline:\n  - {at: 5, create_devices: 0}\n",
        6,
        "timeline[0].create_devices",
        "at least 1",
    ),
    (
        "create_devices float",
        BASE + "timeline:\n  - {at: 5, create_devices: 2.5}\n",
        6,
        "timeline[0].create_devices",
        "whole number",
    ),
    (
        "fault without mode",
        BASE + "timeline:\n  - {at: 5, fault: {region: us-east-1}}\n",
        6,
        "timeline[0].fault",
        "missing mode",
    ),
    (
        "devices zero",
        "name: t\ndevices: 0\nduration_s: 100\nregions: [a, b]\ntimeline: []\n",
        2,
        "devices",
        "at least 1",
    ),
    (
        "devices bool",
        "name: t\ndevices: yes\nduration_s: 100\nregions: [a, b]\ntimeline: []\n",
        2,
        "devices",
        "whole number",
    ),
    (
        "duration zero",
        "name: t\ndevices: 1\nduration_s: 0\nregions: [a, b]\ntimeline: []\n",
        3,
        "duration_s",
        "more than zero",
    ),
    (
        "duration a string",
        "name: t\ndevices: 1\nduration_s: long\nregions: [a, b]\ntimeline: []\n",
        3,
        "duration_s",
        "must be a number",
    ),
    (
        "one region",
        "name: t\ndevices: 1\nduration_s: 10\nregions: [a]\ntimeline: []\n",
        4,
        "regions",
        "at least two regions",
    ),
    (
        "duplicate region",
        "name: t\ndevices: 1\nduration_s: 10\nregions:\n  - a\n  - a\ntimeline: []\n",
        6,
        "regions[1]",
        "listed twice",
    ),
    (
        "regions not a list",
        "name: t\ndevices: 1\nduration_s: 10\nregions: a\ntimeline: []\n",
        4,
        "regions",
        "must be a list",
    ),
    (
        "missing timeline",
        "name: t\ndevices: 1\nduration_s: 10\nregions: [a, b]\n",
        1,
        "",
        "missing timeline",
    ),
    (
        "replication",
        BASE + "replication: sometimes\ntimeline: []\n",
        5,
        "replication",
        "unknown replication 'sometimes' (known: complete, jitr, off)",
    ),
    (
        "fleet unknown key",
        BASE + "fleet: {telemetry_interval_s: 1, speed: 3}\ntimeline: []\n",
        5,
        "fleet.speed",
        "unknown key",
    ),
    (
        "fleet zero interval",
        BASE + "fleet:\n  telemetry_interval_s: 0\ntimeline: []\n",
        6,
        "fleet.telemetry_interval_s",
        "more than zero",
    ),
    (
        "agent unknown section",
        BASE + "agent:\n  failovr: {stability_window_s: 1}\ntimeline: []\n",
        6,
        "agent.failovr",
        "unknown agent section (known: agent, failover, mqtt, outbox, probe)",
    ),
    (
        "agent unknown field",
        BASE + "agent:\n  failover:\n    stability_window: 1\ntimeline: []\n",
        7,
        "agent.failover.stability_window",
        "unknown field of [failover]",
    ),
    (
        "agent identity",
        BASE + "agent:\n  identity: {client_id: x}\ntimeline: []\n",
        6,
        "agent.identity",
        "cannot be overridden",
    ),
    (
        "agent discovery",
        BASE + "agent:\n  discovery: {name: x}\ntimeline: []\n",
        6,
        "agent.discovery",
        "cannot be overridden",
    ),
    (
        "agent outbox path",
        BASE + "agent:\n  outbox:\n    path: /tmp/x\ntimeline: []\n",
        7,
        "agent.outbox.path",
        "cannot be overridden",
    ),
    (
        "agent wrong type",
        BASE + "agent:\n  failover:\n    stability_window_s: soon\ntimeline: []\n",
        7,
        "agent.failover.stability_window_s",
        "must be a number",
    ),
    (
        "agent bool for a number",
        BASE + "agent:\n  mqtt:\n    max_inflight: true\ntimeline: []\n",
        7,
        "agent.mqtt.max_inflight",
        "whole number",
    ),
    (
        "agent value the dataclass refuses",
        BASE + "agent:\n  mqtt:\n    max_inflight: 500\ntimeline: []\n",
        7,
        "agent.mqtt.max_inflight",
        "at most 100",
    ),
    (
        "agent literal",
        BASE + "agent:\n  failover:\n    failback_probe_depth: deep\ntimeline: []\n",
        7,
        "agent.failover.failback_probe_depth",
        "tcp, tls, mqtt, roundtrip",
    ),
    (
        "agent negative",
        BASE + "agent:\n  failover:\n    probe_interval_s: -3\ntimeline: []\n",
        7,
        "agent.failover.probe_interval_s",
        "more than zero",
    ),
    (
        "quotas for an unknown region",
        BASE + "quotas:\n  eu-west-1: {connect_per_s: 5}\ntimeline: []\n",
        6,
        "quotas.eu-west-1",
        "not a region of this scenario",
    ),
    (
        "quotas unknown API",
        BASE + "quotas:\n  us-east-1:\n    CreateThingz: 5\ntimeline: []\n",
        7,
        "quotas.us-east-1.CreateThingz",
        "unknown quota (known: connect_per_s, connect_per_client_id_per_s, AddThingToThingGroup",
    ),
    (
        "quotas zero",
        BASE + "quotas:\n  us-east-1:\n    connect_per_s: 0\ntimeline: []\n",
        7,
        "quotas.us-east-1.connect_per_s",
        "more than zero",
    ),
    (
        "duplicate key",
        BASE + "timeline: []\nduration_s: 5\n",
        6,
        "duration_s",
        "given twice",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        1,
        "",
        "must be a mapping",
    ),
    (
        "step not a mapping",
        BASE + "timeline:\n  - heal\n",
        6,
        "timeline[0]",
        "must be a mapping",
    ),
    (
        "name empty",
        "name: ''\ndevices: 1\nduration_s: 10\nregions: [a, b]\ntimeline: []\n",
        1,
        "name",
        "non-empty string",
    ),
    (
        "description not a string",
        BASE + "description: [a]\ntimeline: []\n",
        5,
        "description",
        "must be a string",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "words"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_errors_name_the_file_line_and_field(text: str, line: int, path: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.line == line, message
    prefix = f"scenario my.yaml line {line}: "
    assert message.startswith(prefix + (f"{path}: " if path else "")), message
    assert info.value.path == (path or None)
    assert words in message
    assert info.value.source == "my.yaml"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: t\ndevices: [1\nduration_s: 3\n", 3),
        ("name: t\n  devices: 1\n", 2),
        ("name: t\ntimeline:\n  - {at: 5, heal: {region: a}\n", 4),
    ],
)
def test_yaml_syntax_errors_have_a_line(text: str, line: int) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="bad.yaml")
    message = str(info.value)
    assert message.startswith(f"scenario bad.yaml line {line}: not valid YAML"), message
    assert "\n" not in message


def test_empty_file() -> None:
    with pytest.raises(ScenarioError, match=r"^scenario e\.yaml line 1: empty"):
        parse_scenario("# nothing\n", source="e.yaml")


def test_every_fault_mode_parses() -> None:
    for mode in FAULT_MODES:
        scenario = parse_scenario(
            BASE + f"timeline:\n  - {{at: 0, fault: {{region: us-west-2, mode: {mode}}}}}\n"
        )
        assert scenario.timeline == (FaultStep(at=0.0, region="us-west-2", mode=mode),)  # type: ignore[arg-type]
    assert set(FAULT_MODES) == {
        "down",
        "blackhole",
        "partial",
        "degraded",
        "control-plane-down",
        "control-plane-drop",
    }


def test_at_on_the_bounds_is_allowed() -> None:
    scenario = parse_scenario(
        BASE + "timeline:\n  - {at: 0, replicator: stop}\n  - {at: 100, replicator: start}\n"
    )
    assert [s.at for s in scenario.timeline] == [0.0, 100.0]


def test_quotas_parse_into_door_and_api_parts() -> None:
    scenario = parse_scenario(
        BASE + "quotas:\n  us-west-2: {connect_per_s: 50, connect_per_client_id_per_s: 2,"
        " CreateThing: 10}\ntimeline: []\n"
    )
    quotas = scenario.quotas["us-west-2"]
    assert quotas.connect_per_s == 50.0
    assert quotas.connect_per_client_id_per_s == 2.0
    assert dict(quotas.api_tps) == {"CreateThing": 10.0}
    assert "us-east-1" not in scenario.quotas


def test_agent_overrides_apply_through_the_dataclasses() -> None:
    scenario = parse_scenario(
        BASE
        + textwrap.dedent("""\
            agent:
              failover: {stability_window_s: 20, failback_probe_depth: mqtt, dr_mode: true}
              probe: {timeout_s: 1}
              mqtt: {keepalive_s: 30}
              outbox: {capacity: 50, overflow: drop_oldest}
              agent: {named_shadows: [config], heartbeat_interval_s: 5}
            timeline: []
            """)
    )
    config = apply_agent_overrides(_agent_config(), scenario.agent)
    assert config.failover.stability_window_s == 20.0
    assert config.failover.failback_probe_depth == "mqtt"
    assert config.failover.dr_mode is True
    assert config.failover.probe_interval_s == 3.0  # untouched
    assert config.probe.timeout_s == 1.0
    assert config.mqtt.keepalive_s == 30
    assert config.outbox.capacity == 50
    assert config.outbox.overflow == "drop_oldest"
    assert config.named_shadows == ("config",)
    assert config.heartbeat_interval_s == 5.0
    assert config.identity == _agent_config().identity


def test_auto_spreads_are_the_fleet_over_each_regions_connect_quota() -> None:
    scenario = parse_scenario(
        BASE
        + textwrap.dedent("""\
            agent:
              failover: {failover_spread_s: auto, failback_spread_s: auto, stability_window_s: 5}
            quotas:
              us-west-2: {connect_per_s: 40}
            timeline: []
            """)
    )
    assert scenario.agent["failover"]["failover_spread_s"] == "auto"  # until the size is known
    big = with_devices(scenario, 2000)
    resolved = resolved_agent(big)["failover"]
    assert resolved["failover_spread_s"] == 50.0  # 2,000 / the secondary's 40 CONNECT/s
    assert resolved["failback_spread_s"] == 4.0  # 2,000 / the primary's default 500/s
    assert resolved["stability_window_s"] == 5.0
    config = apply_agent_overrides(_agent_config(), resolved_agent(big))
    assert config.failover.failover_spread_s == 50.0
    assert scenario_settings(big)["agent"]["failover"]["failover_spread_s"] == 50.0  # type: ignore[index]


def test_auto_is_only_for_the_spreads() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE + "agent:\n  failover: {stability_window_s: auto}\ntimeline: []\n")
    assert "must be a number" in str(info.value)


def test_a_scenario_without_auto_keeps_its_overrides() -> None:
    scenario = parse_scenario(BASE + "agent:\n  failover: {failover_spread_s: 7}\ntimeline: []\n")
    assert resolved_agent(scenario) is scenario.agent


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"identity": {}}, "agent.identity", "cannot be overridden"),
        ({"outbox": {"path": "/x"}}, "agent.outbox.path", "cannot be overridden"),
        ({"agent": {"status_path": "/x"}}, "agent.agent.status_path", "cannot be overridden"),
        ({"nope": {}}, "agent.nope", "unknown agent section"),
        ({"failover": {"nope": 1}}, "agent.failover.nope", "unknown field"),
        ({"failover": {"probe_interval_s": "x"}}, "agent.failover.probe_interval_s", "number"),
        ({"failover": {"probe_interval_s": 0}}, "agent.failover", "more than zero"),
    ],
)
def test_apply_agent_overrides_rejects(
    overrides: dict[str, dict[str, object]], path: str, words: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        apply_agent_overrides(_agent_config(), overrides)
    assert info.value.path == path
    assert words in str(info.value)


def test_scenario_is_frozen() -> None:
    scenario = builtin_scenarios()["blackhole"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.devices = 3  # type: ignore[misc]


def test_region_settings_for_local_regions() -> None:
    from simulators.gateway import ConnectLimits

    scenario = parse_scenario(
        BASE + "quotas:\n  us-west-2: {connect_per_s: 50, CreateThing: 10}\n"
        "  us-east-1: {connect_per_client_id_per_s: 2}\ntimeline: []\n"
    )
    settings = region_settings(scenario)
    assert settings == {
        "region_quotas": {"us-west-2": {"CreateThing": 10.0}},
        "door_limits": {
            "us-west-2": ConnectLimits(account_per_s=50.0),
            "us-east-1": ConnectLimits(client_id_per_s=2.0),
        },
    }
    assert region_settings(parse_scenario(BASE + "timeline: []\n")) == {
        "region_quotas": {},
        "door_limits": {},
    }
