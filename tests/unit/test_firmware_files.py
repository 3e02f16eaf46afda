"""The agent as a firmware component: examples/agent.toml and the systemd unit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    FailoverConfig,
    MQTTConfig,
    OutboxConfig,
    ProbeConfig,
    load_agent_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agent.toml"
UNIT = ROOT / "examples" / "iotdr-agent.service"
_OPTION = re.compile(r"^# (\w+) = ")


def test_the_example_loads() -> None:
    config = load_agent_config(EXAMPLE)
    assert config.outbox.path == Path("/var/lib/iotdr/outbox.db")
    assert set(config.discovery.endpoints) == {"us-east-1", "us-west-2"}


def test_the_example_documents_every_option() -> None:
    text = EXAMPLE.read_text()
    sections = {
        "failover": FailoverConfig,
        "probe": ProbeConfig,
        "mqtt": MQTTConfig,
        "outbox": OutboxConfig,
        "discovery": DiscoveryConfig,
    }
    missing = [
        f"[{section}] {f.name}"
        for section, cls in sections.items()
        for f in fields(cls)
        if f.name != "endpoints" and not re.search(rf"^#? ?{f.name} = ", text, re.MULTILINE)
    ]
    agent_keys = ("named_shadows", "status_path", "subscribe", "heartbeat_topic")
    assert {f.name for f in fields(AgentConfig)} >= set(agent_keys)
    documented = {k for k in agent_keys if re.search(rf"^#? ?{k} = ", text, re.MULTILINE)}
    missing += [f"[agent] {k}" for k in agent_keys if k not in documented]
    assert missing == []


def test_every_documented_value_is_valid(tmp_path: Path) -> None:
    """Uncomment every option (the endpoints' alternatives aside): the file still loads."""
    lines, section = [], ""
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("["):
            section = line.split("]")[0]
        option = _OPTION.match(line) and section != "[discovery.endpoints"
        lines.append(line[2:] if option else line)
    uncommented = tmp_path / "agent.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    config = load_agent_config(uncommented)
    assert config.mqtt.alpn == ("x-amzn-mqtt-ca",)
    assert config.discovery.server_names["us-west-2"] == "iot.example.com"


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals, f"not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_the_daemon_hardened_with_a_state_directory() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"][0].endswith("--log-json agent run --config /etc/iotdr/agent.toml")
    expected = {
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",  # a configuration error: no restart loop
        "StateDirectory": "iotdr",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "KillSignal": "SIGTERM",
        "UMask": "0077",
        "User": "iotdr",
    }
    assert {k: service[k][-1] for k in expected} == expected
    assert service["CapabilityBoundingSet"] == [""]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "iotdr-agent.service"
    # verify wants ExecStart's program to exist; the interpreter stands in for iotdr.
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/iotdr", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
