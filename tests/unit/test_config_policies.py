"""The fleet-friendly policies in the agent's configuration: defaults, validation, agent.toml."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from device_agent._config import FailoverConfig, MQTTConfig, load_agent_config
from device_agent._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def test_the_defaults() -> None:
    failover = FailoverConfig()
    assert failover.probe_jitter == 0.2
    assert failover.failback_spread_s == 30.0
    assert failover.throttle_backoff_base_s == 1.0
    assert failover.throttle_backoff_max_s == 30.0
    assert MQTTConfig().source_address is None


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("probe_jitter", 1.0, "less than 1"),
        ("probe_jitter", -0.1, "zero or more"),
        ("probe_jitter", float("nan"), "zero or more"),
        ("failback_spread_s", -1.0, "zero or more"),
        ("throttle_backoff_base_s", 0.0, "more than zero"),
        ("throttle_backoff_max_s", 0.0, "more than zero"),
    ],
)
def test_bad_policy_values_are_refused(field: str, value: float, words: str) -> None:
    with pytest.raises(ConfigError, match=f"FailoverConfig.{field} must be {words}"):
        FailoverConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, 0.99])
def test_probe_jitter_edges(value: float) -> None:
    assert FailoverConfig(probe_jitter=value).probe_jitter == value


@pytest.mark.parametrize("address", ["127.0.0.2", "::1", "10.1.2.3"])
def test_a_source_address_is_an_ip_address(address: str) -> None:
    assert MQTTConfig(source_address=address).source_address == address


@pytest.mark.parametrize("address", ["localhost", "127.0.0.2:4000", "", "300.1.1.1"])
def test_a_source_address_that_is_not_an_ip_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match=r"MQTTConfig\.source_address must be an IP address"):
        MQTTConfig(source_address=address)


def test_agent_toml_reads_the_policy_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
[identity]
client_id = "dev-1"
cert = "dev.crt"
key = "dev.key"
ca = "ca.crt"

[discovery]
endpoints = { us-east-1 = "east.example", us-west-2 = "west.example" }

[failover]
probe_jitter = 0.3
failback_spread_s = 120.0
throttle_backoff_base_s = 2.0
throttle_backoff_max_s = 45.0

[mqtt]
source_address = "127.0.0.3"
protocol = "5"
"""
    )
    config = load_agent_config(path)
    assert config.failover.probe_jitter == 0.3
    assert config.failover.failback_spread_s == 120.0
    assert config.failover.throttle_backoff_base_s == 2.0
    assert config.failover.throttle_backoff_max_s == 45.0
    assert config.mqtt.source_address == "127.0.0.3"
    assert config.mqtt.protocol == "5"


def test_agent_toml_names_the_file_and_key_of_a_bad_source_address(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[identity]\nclient_id = "d"\ncert = "c"\nkey = "k"\nca = "a"\n'
        '[discovery]\nendpoints = ["us-east-1=east.example", "us-west-2=west.example"]\n'
        '[mqtt]\nsource_address = "eth0"\n'
    )
    with pytest.raises(ConfigError, match=r"agent\.toml: MQTTConfig.source_address"):
        load_agent_config(path)


def test_the_mqtt_level_is_3_1_1_or_5() -> None:
    assert MQTTConfig().protocol == "3.1.1"
    assert MQTTConfig(protocol="5").protocol == "5"
    with pytest.raises(ConfigError, match=r'MQTTConfig\.protocol must be "3\.1\.1" or "5"'):
        MQTTConfig(protocol="4")  # type: ignore[arg-type]
