"""A scenario's ``agent:`` overrides: the sections and names of ``agent.toml``, checked.

The fleet simulator gives every device the agent's defaults, then the
scenario's overrides (``agent: {failover: {stability_window_s: 20}}``),
through the configuration dataclasses themselves, so a value the agent
refuses is refused here with the path of the field
(``agent.failover.stability_window_s``). The simulator owns the identity, the
discovery and the outbox's path of every device: overriding them is an error.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    FailoverConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
    ProbeConfig,
)
from device_agent._errors import ConfigError
from simulators.fleet._scenario_yaml import ScenarioError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "agent_value",
    "apply_agent_overrides",
    "check_override_key",
    "placeholder_agent_config",
]


_AGENT_SECTIONS: dict[str, type[Any]] = {
    "failover": FailoverConfig,
    "probe": ProbeConfig,
    "mqtt": MQTTConfig,
    "outbox": OutboxConfig,
    "agent": AgentConfig,
}
_SIMULATOR_OWNS = {
    "identity": "the simulator gives every device its own identity",
    "discovery": "the simulator points every device at the local regions' DNS",
    "outbox.path": "the simulator gives every device its own outbox",
    "agent.status_path": "the simulator watches the devices itself",
    "agent.identity": "the simulator gives every device its own identity",
    "agent.discovery": "the simulator points every device at the local regions' DNS",
    "agent.failover": "write it as its own section, failover: {...}",
    "agent.probe": "write it as its own section, probe: {...}",
    "agent.mqtt": "write it as its own section, mqtt: {...}",
    "agent.outbox": "write it as its own section, outbox: {...}",
}


def _section_fields(section: str) -> dict[str, Any]:
    cls = _AGENT_SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def agent_value(section: str, name: str, value: object) -> object:
    """``value`` as the type of ``section.name``; raises ValueError saying what it must be."""
    kind = _section_fields(section)[name]
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("must be a whole number")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError("must be a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("must be a string")
    if origin is Literal:
        choices = typing.get_args(kind)
        if value in choices and isinstance(value, str):
            return value
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    if origin is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError("must be a list of strings")
    if kind == (str | None):
        if value is None or isinstance(value, str):
            return value
        raise ValueError("must be a string or null")
    raise ValueError("cannot be set from a scenario")  # pragma: no cover - every field is typed


def check_override_key(section: str, name: str | None = None) -> str | None:
    """Why ``section[.name]`` cannot be overridden, or None when it can."""
    key = section if name is None else f"{section}.{name}"
    if key in _SIMULATOR_OWNS:
        return f"cannot be overridden: {_SIMULATOR_OWNS[key]}"
    if section not in _AGENT_SECTIONS:
        return f"unknown agent section (known: {', '.join(sorted(_AGENT_SECTIONS))})"
    if name is not None and name not in _section_fields(section):
        known = sorted(set(_section_fields(section)) - _owned_fields(section))
        return f"unknown field of [{section}] (known: {', '.join(known)})"
    return None


def _owned_fields(section: str) -> set[str]:
    return {k.partition(".")[2] for k in _SIMULATOR_OWNS if k.startswith(f"{section}.")}


def apply_agent_overrides(
    config: AgentConfig, overrides: Mapping[str, Mapping[str, object]]
) -> AgentConfig:
    """``config`` with a scenario's ``agent:`` overrides applied.

    Sections are those of ``agent.toml`` (failover, probe, mqtt, outbox, agent);
    the dataclasses' own checks validate the values.

    Raises:
        ScenarioError: an unknown or simulator-owned section or field, or a
            value the agent's configuration refuses; the message names
            ``agent.SECTION.FIELD``.
    """
    for section, values in overrides.items():
        problem = check_override_key(section)
        if problem is not None:
            raise ScenarioError(problem, path=f"agent.{section}")
        converted: dict[str, object] = {}
        for name, value in values.items():
            path = f"agent.{section}.{name}"
            problem = check_override_key(section, name)
            if problem is not None:
                raise ScenarioError(problem, path=path)
            try:
                converted[name] = agent_value(section, name, value)
            except ValueError as exc:
                raise ScenarioError(f"{exc}, not {value!r}", path=path) from None
        try:
            if section == "agent":
                config = dataclasses.replace(config, **converted)  # type: ignore[arg-type]
            else:
                part = dataclasses.replace(getattr(config, section), **converted)
                config = dataclasses.replace(config, **{section: part})
        except (ConfigError, TypeError, ValueError) as exc:
            raise ScenarioError(str(exc), path=f"agent.{section}") from exc
    return config


def placeholder_agent_config() -> AgentConfig:
    """An agent configuration to check overrides against (no file is read)."""
    here = Path("device.pem")
    return AgentConfig(
        identity=IdentityConfig(client_id="check", cert_path=here, key_path=here, ca_path=here),
        discovery=DiscoveryConfig(name="iot.iotdr.test"),
    )
