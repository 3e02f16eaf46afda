"""Scenarios: what a fleet run does and when, read from YAML and checked to the last key.

A scenario names the regions (primary first), the fleet's size and pace, the
agent's settings that differ from its defaults, the quotas in force and a
timeline of steps::

    name: primary-blackhole
    description: the primary goes silent for a minute, then recovers
    devices: 500                      # default when --devices is not given
    duration_s: 150
    regions: [us-east-1, us-west-2]   # primary first
    replication: complete             # complete | jitr | off
    fleet: {telemetry_interval_s: 1.0, shadow_interval_s: 10}
    agent: {failover: {stability_window_s: 20}}   # same sections and names as agent.toml
    quotas: {us-west-2: {connect_per_s: 100, CreateThing: 10}}
    timeline:
      - {at: 20, fault: {region: us-east-1, mode: blackhole}}
      - {at: 25, create_devices: 50}
      - {at: 30, replicator: stop}
      - {at: 60, replicator: start}
      - {at: 80, heal: {region: us-east-1}}
      - {at: 120, dns: {cname: us-east-1}}
      - {at: 130, fault: {side: devices, region: us-east-1, mode: reset, fraction: 0.5}}
      - {at: 140, heal: {region: us-east-1, side: devices}}

A fault's ``side`` is ``door`` (the default: the region's door or control
plane fails, for everyone) or ``devices`` (the devices' way to the region
fails, for ``fraction`` of them, the door untouched: what a drill against a
real AWS account can do; see :mod:`simulators.fleet._device_faults`).

Everything here is pure but :func:`load_scenario`, which reads the file (or
the built-in's package data). The YAML with line numbers is
:mod:`simulators.fleet._scenario_yaml`; the ``agent:`` overrides are checked
by :mod:`simulators.fleet._scenario_agent`. Unknown keys are errors, and every error is a
:class:`ScenarioError` whose one-line message names the file, the line and the
field at fault: ``scenario my.yaml line 12: timeline[2].fault.mode: unknown
fault mode 'melt' (known: ...)``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from replicator.runtime._quotas import DEFAULT_TPS
from simulators.fleet._scenario_agent import (
    agent_value,
    apply_agent_overrides,
    check_override_key,
    placeholder_agent_config,
)
from simulators.fleet._scenario_yaml import ScenarioError, YamlNode, compose

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CONTROL_PLANE_FAULT_MODES",
    "DEFAULT_SCENARIO",
    "DEVICE_FAULT_MODES",
    "DOOR_FAULT_MODES",
    "FAULT_MODES",
    "REPLICATION_MODES",
    "CreateDevicesStep",
    "DeviceFaultStep",
    "DnsStep",
    "FaultStep",
    "FleetSettings",
    "HealStep",
    "RegionQuotas",
    "ReplicatorStep",
    "Scenario",
    "ScenarioError",
    "Step",
    "apply_agent_overrides",
    "builtin_scenarios",
    "load_scenario",
    "parse_scenario",
    "region_settings",
    "scenario_settings",
    "with_devices",
]

DOOR_FAULT_MODES: tuple[str, ...] = ("down", "blackhole", "partial", "degraded")
"""Faults of a region's door, as ``iotdr sim fault`` takes them."""
CONTROL_PLANE_FAULT_MODES: tuple[str, ...] = ("control-plane-down", "control-plane-drop")
"""Faults of a region's control plane, as ``iotdr sim fault`` takes them."""
FAULT_MODES: tuple[str, ...] = DOOR_FAULT_MODES + CONTROL_PLANE_FAULT_MODES
DEVICE_FAULT_MODES: tuple[str, ...] = ("refuse", "reset", "blackhole")
"""Faults on the devices' side (``side: devices``): their way to a region fails, not its door."""
FAULT_SIDES: tuple[str, ...] = ("door", "devices")
REPLICATION_MODES: tuple[str, ...] = ("complete", "jitr", "off")
DEFAULT_SCENARIO = "region-outage"

FaultMode = Literal[
    "down", "blackhole", "partial", "degraded", "control-plane-down", "control-plane-drop"
]
DeviceFaultMode = Literal["refuse", "reset", "blackhole"]
FaultSide = Literal["door", "devices"]
Replication = Literal["complete", "jitr", "off"]


# -- the scenario's values ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSettings:
    """How the virtual devices behave.

    Attributes:
        telemetry_interval_s: each device publishes numbered QoS 1 telemetry this often.
        shadow_interval_s: each device updates its reported shadow this often.
        start_spread_s: the devices start spread evenly over this long (0: all at once).
    """

    telemetry_interval_s: float = 1.0
    shadow_interval_s: float = 10.0
    start_spread_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionQuotas:
    """One region's quotas while the scenario runs (None: AWS's default).

    Attributes:
        connect_per_s: the door's CONNECTs per second per account (AWS: 500).
        connect_per_client_id_per_s: CONNECTs per second per client ID (AWS: 1).
        api_tps: control-plane calls per second by AWS IoT operation name.
    """

    connect_per_s: float | None = None
    connect_per_client_id_per_s: float | None = None
    api_tps: Mapping[str, float] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStep:
    """Inject ``mode`` into ``region`` (its door, or its control plane)."""

    at: float
    region: str
    mode: FaultMode


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFaultStep:
    """Fail the way to ``region`` of ``fraction`` of the devices (``side: devices``).

    Which devices: chosen from the fleet's seed and each device's name, the
    same on every run with that seed. The door is not touched.
    """

    at: float
    region: str
    mode: DeviceFaultMode
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            msg = f"must be more than 0 and at most 1, not {self.fraction!r}"
            raise ScenarioError(msg, path="fraction")


@dataclass(frozen=True, slots=True, kw_only=True)
class HealStep:
    """Clear the faults of ``region``: its door's and control plane's, the devices' side, or both.

    Attributes:
        side: ``door`` (the door and the control plane), ``devices`` (the
            device-side faults), None: both.
    """

    at: float
    region: str
    side: FaultSide | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateDevicesStep:
    """Register ``count`` new devices, in the primary only, and start them."""

    at: float
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicatorStep:
    """Stop or start the replicator."""

    at: float
    action: Literal["stop", "start"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsStep:
    """Point the devices' CNAME at ``cname`` by hand."""

    at: float
    cname: str


Step = FaultStep | DeviceFaultStep | HealStep | CreateDevicesStep | ReplicatorStep | DnsStep


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A fleet run's plan.

    Attributes:
        name: its name.
        description: one line for ``iotdr sim scenarios``.
        devices: how many devices (``--devices`` overrides it).
        duration_s: how long the timeline runs.
        regions: the regions, primary first.
        replication: ``complete`` (the replicator copies what is created),
            ``jitr`` (certificates reach the secondary by just-in-time
            registration), ``off``.
        fleet: the devices' pace.
        agent: overrides of the agent's settings by section and field, as in
            ``agent.toml`` (:func:`apply_agent_overrides` applies them).
        quotas: per region, the quotas that differ from AWS's defaults.
        timeline: the steps, in time order.
    """

    name: str
    description: str
    devices: int
    duration_s: float
    regions: tuple[str, ...]
    replication: Replication = "complete"
    fleet: FleetSettings = field(default_factory=FleetSettings)
    agent: Mapping[str, Mapping[str, object]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    quotas: Mapping[str, RegionQuotas] = field(default_factory=lambda: types.MappingProxyType({}))
    timeline: tuple[Step, ...] = ()

    @property
    def primary(self) -> str:
        """The primary region."""
        return self.regions[0]


def scenario_settings(scenario: Scenario) -> dict[str, object]:
    """What a run's report records of its scenario's settings (JSON-ready)."""
    return {
        "replication": scenario.replication,
        "telemetry_interval_s": scenario.fleet.telemetry_interval_s,
        "shadow_interval_s": scenario.fleet.shadow_interval_s,
        "start_spread_s": scenario.fleet.start_spread_s,
        "agent": {section: dict(values) for section, values in resolved_agent(scenario).items()},
        "quotas": {
            region: {
                "connect_per_s": q.connect_per_s,
                "connect_per_client_id_per_s": q.connect_per_client_id_per_s,
                **dict(q.api_tps),
            }
            for region, q in scenario.quotas.items()
        },
    }


AWS_CONNECT_PER_S = 500.0
"""AWS IoT's default CONNECT quota per account and region (adjustable)."""

_AUTO_SPREADS = {"failover_spread_s": "secondary", "failback_spread_s": "primary"}
"""The agent's spreads a scenario may set to ``auto``, and the region whose quota sizes each."""


def connect_quota(scenario: Scenario, region: str) -> float:
    """``region``'s CONNECT quota per second in ``scenario`` (AWS's default when unset)."""
    quotas = scenario.quotas.get(region)
    if quotas is not None and quotas.connect_per_s is not None:
        return float(quotas.connect_per_s)
    return AWS_CONNECT_PER_S


def resolved_agent(scenario: Scenario) -> Mapping[str, Mapping[str, object]]:
    """The scenario's agent overrides with every ``auto`` spread made a number.

    ``failover.failover_spread_s: auto`` is the whole fleet's size over the
    secondary's CONNECT quota, the least time N devices can take to move
    there; ``failover.failback_spread_s: auto`` the same over the primary's.
    A shard's scenario holds the whole fleet's size, so every shard spreads
    over the same window.
    """
    failover = scenario.agent.get("failover", {})
    if not any(failover.get(name) == "auto" for name in _AUTO_SPREADS):
        return scenario.agent
    roles = {"primary": scenario.regions[0], "secondary": scenario.regions[1]}
    values = dict(failover)
    for name, role in _AUTO_SPREADS.items():
        if values.get(name) == "auto":
            values[name] = round(scenario.devices / connect_quota(scenario, roles[role]), 3)
    return types.MappingProxyType({**scenario.agent, "failover": types.MappingProxyType(values)})


def with_devices(scenario: Scenario, devices: int) -> Scenario:
    """``scenario`` with ``devices`` devices (the ``--devices`` flag).

    Raises:
        ScenarioError: ``devices`` is not a positive whole number.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        msg = f"--devices must be a whole number of at least 1, not {devices!r}"
        raise ScenarioError(msg, source=scenario.name)
    return dataclasses.replace(scenario, devices=devices)


def region_settings(scenario: Scenario) -> dict[str, Any]:
    """The scenario's quotas as :class:`simulators._regions.LocalRegions` keyword arguments.

    ``region_quotas``: per region, the control plane's API=TPS overrides;
    ``door_limits``: per region, the door's CONNECT quotas (AWS's defaults
    where the scenario gives none). Only regions with overrides appear.
    """
    from simulators.gateway import ConnectLimits  # noqa: PLC0415 - the gateway loads TLS code

    region_quotas: dict[str, dict[str, float]] = {}
    door_limits: dict[str, ConnectLimits] = {}
    for region, quotas in scenario.quotas.items():
        if quotas.api_tps:
            region_quotas[region] = dict(quotas.api_tps)
        door: dict[str, float] = {}
        if quotas.connect_per_s is not None:
            door["account_per_s"] = quotas.connect_per_s
        if quotas.connect_per_client_id_per_s is not None:
            door["client_id_per_s"] = quotas.connect_per_client_id_per_s
        if door:
            door_limits[region] = ConnectLimits(**door)
    return {"region_quotas": region_quotas, "door_limits": door_limits}


# -- parsing ------------------------------------------------------------------------------

_TOP_REQUIRED = ("name", "devices", "duration_s", "regions", "timeline")
_TOP_OPTIONAL = ("description", "replication", "fleet", "agent", "quotas")
_ACTIONS = ("fault", "heal", "create_devices", "replicator", "dns")
_DOOR_QUOTAS = ("connect_per_s", "connect_per_client_id_per_s")


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Parse and check a scenario's YAML text.

    Args:
        text: the YAML.
        source: the file name the errors name.

    Raises:
        ScenarioError: the text is not YAML, or not a valid scenario.
    """
    node, loader = compose(text, source)
    root = YamlNode(node, "", source, loader)
    top = root.keys(
        "a scenario: name, devices, duration_s, regions, timeline, ...",
        required=_TOP_REQUIRED,
        optional=_TOP_OPTIONAL,
    )
    duration_s = top["duration_s"].number(positive=True)
    regions = _regions(top["regions"])
    description = top["description"].value() if "description" in top else ""
    if not isinstance(description, str):
        raise top["description"].error("must be a string (one line)")
    return Scenario(
        name=top["name"].string(),
        description=" ".join(description.split()),
        devices=top["devices"].integer(),
        duration_s=duration_s,
        regions=regions,
        replication=typing.cast(
            "Replication",
            top["replication"].choice(REPLICATION_MODES, "replication")
            if "replication" in top
            else "complete",
        ),
        fleet=_fleet(top["fleet"]) if "fleet" in top else FleetSettings(),
        agent=_agent(top["agent"]) if "agent" in top else types.MappingProxyType({}),
        quotas=_quotas(top["quotas"], regions) if "quotas" in top else types.MappingProxyType({}),
        timeline=_timeline(top["timeline"], regions, duration_s),
    )


def _regions(node: YamlNode) -> tuple[str, ...]:
    items = node.sequence("the regions, primary first")
    regions: list[str] = []
    for item in items:
        region = item.string()
        if region in regions:
            raise item.error(f"region {region!r} is listed twice")
        regions.append(region)
    if len(regions) < 2:
        raise node.error("needs at least two regions, the primary first")
    return tuple(regions)


def _fleet(node: YamlNode) -> FleetSettings:
    names = tuple(f.name for f in dataclasses.fields(FleetSettings))
    items = node.keys("the devices' pace", required=(), optional=names)
    values = {
        name: child.number(positive=name != "start_spread_s") for name, child in items.items()
    }
    return FleetSettings(**values)


def _agent(node: YamlNode) -> Mapping[str, Mapping[str, object]]:
    base = placeholder_agent_config()
    out: dict[str, Mapping[str, object]] = {}
    for section, section_node in node.mapping("overrides by agent.toml section").items():
        problem = check_override_key(section)
        if problem is not None:
            raise section_node.error(problem)
        values: dict[str, object] = {}
        for name, child in section_node.mapping(f"the [{section}] fields to override").items():
            problem = check_override_key(section, name)
            if problem is not None:
                raise child.error(problem)
            if section == "failover" and name in _AUTO_SPREADS and child.value() == "auto":
                values[name] = "auto"  # the fleet's size over a quota: resolved_agent()
                continue
            try:
                value = agent_value(section, name, child.value())
                apply_agent_overrides(base, {section: {name: value}})
            except ValueError as exc:
                raise child.error(f"{exc}, not {child.value()!r}") from None
            except ScenarioError as exc:
                raise child.error(exc.problem) from None
            values[name] = value
        out[section] = types.MappingProxyType(values)
    return types.MappingProxyType(out)


def _quotas(node: YamlNode, regions: tuple[str, ...]) -> Mapping[str, RegionQuotas]:
    out: dict[str, RegionQuotas] = {}
    for region, region_node in node.mapping("quotas per region").items():
        if region not in regions:
            raise region_node.error(
                f"not a region of this scenario (regions: {', '.join(regions)})"
            )
        door: dict[str, float] = {}
        api: dict[str, float] = {}
        for name, child in region_node.mapping("door CONNECT quotas and API=TPS").items():
            if name in _DOOR_QUOTAS:
                door[name] = child.number(positive=True)
            elif name in DEFAULT_TPS:
                api[name] = child.number(positive=True)
            else:
                known = ", ".join((*_DOOR_QUOTAS, *sorted(DEFAULT_TPS)))
                raise child.error(f"unknown quota (known: {known})")
        out[region] = RegionQuotas(api_tps=types.MappingProxyType(api), **door)
    return types.MappingProxyType(out)


def _timeline(node: YamlNode, regions: tuple[str, ...], duration_s: float) -> tuple[Step, ...]:
    steps: list[Step] = []
    for item in node.sequence("the steps"):
        fields = item.mapping("a step: at and one action")
        actions = [name for name in fields if name in _ACTIONS]
        for name, child in fields.items():
            if name != "at" and name not in _ACTIONS:
                raise child.error(f"unknown key (allowed: at, {', '.join(_ACTIONS)})")
        if "at" not in fields:
            raise item.error("missing at (seconds from the start)")
        if len(actions) != 1:
            found = f"{len(actions)} ({', '.join(actions)})" if actions else "none"
            raise item.error(f"a step takes exactly one of {', '.join(_ACTIONS)}; found {found}")
        at = fields["at"].number()
        if at > duration_s:
            raise fields["at"].error(
                f"{at:g} is after the end of the run (duration_s {duration_s:g})"
            )
        if steps and at < steps[-1].at:
            raise fields["at"].error(
                f"{at:g} is before the previous step's {steps[-1].at:g}; "
                "list the steps in time order"
            )
        steps.append(_step(actions[0], fields[actions[0]], at, regions))
    return tuple(steps)


def _region(node: YamlNode, regions: tuple[str, ...]) -> str:
    region = node.string()
    if region not in regions:
        raise node.error(f"region {region!r} is not one of this scenario's ({', '.join(regions)})")
    return region


def _step(action: str, node: YamlNode, at: float, regions: tuple[str, ...]) -> Step:
    if action == "fault":
        return _fault(node, at, regions)
    if action == "heal":
        items = node.keys("the region to heal", required=("region",), optional=("side",))
        side = items["side"].choice(FAULT_SIDES, "side") if "side" in items else None
        return HealStep(
            at=at,
            region=_region(items["region"], regions),
            side=typing.cast("FaultSide | None", side),
        )
    if action == "create_devices":
        return CreateDevicesStep(at=at, count=node.integer())
    if action == "replicator":
        choice = node.choice(("stop", "start"), "replicator action")
        return ReplicatorStep(at=at, action=typing.cast("Literal['stop', 'start']", choice))
    items = node.keys("the region the CNAME points at", required=("cname",))
    return DnsStep(at=at, cname=_region(items["cname"], regions))


def _fault(node: YamlNode, at: float, regions: tuple[str, ...]) -> FaultStep | DeviceFaultStep:
    items = node.keys(
        "the region and the mode", required=("region", "mode"), optional=("side", "fraction")
    )
    side = items["side"].choice(FAULT_SIDES, "side") if "side" in items else "door"
    region = _region(items["region"], regions)
    if side == "door":
        if "fraction" in items:
            raise items["fraction"].error(
                "a door's fault takes every device; fraction needs side: devices"
            )
        mode = items["mode"].choice(FAULT_MODES, "fault mode")
        return FaultStep(at=at, region=region, mode=typing.cast("FaultMode", mode))
    mode = items["mode"].choice(DEVICE_FAULT_MODES, "device-side fault mode")
    fraction = 1.0
    if "fraction" in items:
        fraction = items["fraction"].number(positive=True)
        if fraction > 1:
            raise items["fraction"].error(
                f"must be at most 1 (the share of the devices), not {fraction:g}"
            )
    return DeviceFaultStep(
        at=at, region=region, mode=typing.cast("DeviceFaultMode", mode), fraction=fraction
    )


# -- loading ------------------------------------------------------------------------------


def _builtin_texts() -> dict[str, str]:
    folder = resources.files("simulators.fleet").joinpath("scenarios")
    return {
        entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def builtin_scenarios() -> dict[str, Scenario]:
    """The scenarios that come with iotdr, by name (``region-outage`` is the default)."""
    return {
        name: parse_scenario(text, source=f"{name}.yaml") for name, text in _builtin_texts().items()
    }


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path.

    Raises:
        ScenarioError: not a built-in and not a readable file, or invalid.
    """
    texts = _builtin_texts()
    if name_or_path in texts:
        return parse_scenario(texts[name_or_path], source=f"{name_or_path}.yaml")
    path = Path(name_or_path)
    looks_like_path = path.suffix in {".yaml", ".yml"} or len(path.parts) > 1
    if not looks_like_path and not path.exists():
        msg = (
            f"unknown scenario {name_or_path!r}: "
            f"give a built-in ({', '.join(texts)}) or a .yaml file"
        )
        raise ScenarioError(msg)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        msg = f"cannot read: {reason}; built-ins: {', '.join(texts)}"
        raise ScenarioError(msg, source=str(path)) from exc
    return parse_scenario(text, source=str(path))
