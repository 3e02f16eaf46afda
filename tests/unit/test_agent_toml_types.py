"""agent.toml with values of the wrong type: one line naming the key, never a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from device_agent._config import load_agent_config
from device_agent._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

_IDENTITY = '[identity]\nclient_id = "d"\ncert = "c"\nkey = "k"\nca = "a"\n'
_ENDPOINTS = 'endpoints = ["us-east-1=e.example", "us-west-2=w.example"]\n'


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[mqtt]\nport = "8883"\n', "MQTTConfig.port"),  # a string, not a number
        ("[mqtt]\nport = 88.5\n", "MQTTConfig.port"),
        ("[mqtt]\nkeepalive_s = 60.5\n", "MQTTConfig.keepalive_s"),
        ('[agent]\nsubscribe = "cmd/#"\n', "[agent] subscribe"),  # a string where a list is
        ('[agent]\nnamed_shadows = "config"\n', "[agent] named_shadows"),
        ("[agent]\nsubscribe = [1]\n", "[agent] subscribe"),
        ("[failover]\nreconnect_attempts = 2.5\n", "FailoverConfig.reconnect_attempts"),
        ('[failover]\nfailure_threshold = "3"\n', "FailoverConfig.failure_threshold"),
        ("[probe]\ntopic = 5\n", "[probe] topic"),
        ("[outbox]\ncapacity = 10.5\n", "OutboxConfig.capacity"),
        ('[outbox]\npath = ["outbox.db"]\n', "[outbox] path"),  # a list where a path is
        ("[outbox]\ndead_letter_after = 2.5\n", "OutboxConfig.dead_letter_after"),
        ('[outbox]\nflush_on_stop_s = "5"\n', "OutboxConfig.flush_on_stop_s"),
        ("[mqtt]\nsource_address = 5\n", "[mqtt] source_address"),  # would be 0.0.0.5
        ('[mqtt]\ntransport = ["paho"]\n', "[mqtt] transport"),
        ('[mqtt]\nsubscription_queue = "100"\n', "MQTTConfig.subscription_queue"),
        ("[mqtt]\nsubscription_queue = 0\n", "MQTTConfig.subscription_queue"),
        ('[mqtt]\nsubscription_overflow = "block"\n', "MQTTConfig.subscription_overflow"),
        ("[agent]\nheartbeat_topic = 5\n", "[agent] heartbeat_topic"),
        ('[agent]\nstatus_path = ["status.json"]\n', "[agent] status_path"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_IDENTITY + "[discovery]\n" + _ENDPOINTS + toml)
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    message = str(caught.value)
    assert named in message
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("discovery", "named"),
    [
        ('nameservers = "10.0.0.1"\n', "[discovery] nameservers"),
        ('port = "53"\n', "DiscoveryConfig.port"),
        ("dns_server = 53\n", "[discovery] dns_server"),  # would be the host "53"
        ("name = 5\n", "[discovery] name"),
        ('txt_name = ["_iot.example.com"]\n', "[discovery] txt_name"),
    ],
)
def test_discovery_types(tmp_path: Path, discovery: str, named: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_IDENTITY + "[discovery]\n" + _ENDPOINTS + discovery)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_agent_config(path)


def test_a_client_id_must_be_a_string(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_IDENTITY.replace('"d"', "5") + "[discovery]\n" + _ENDPOINTS)
    with pytest.raises(ConfigError, match=r"\[identity\] client_id must be a string"):
        load_agent_config(path)


@pytest.mark.parametrize(
    ("identity", "named"),
    [
        (_IDENTITY.replace('cert = "c"', 'cert = ["c"]'), "[identity] cert"),
        (_IDENTITY + "thing_name = 5\n", "[identity] thing_name"),
    ],
)
def test_identity_types(tmp_path: Path, identity: str, named: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(identity + "[discovery]\n" + _ENDPOINTS)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_agent_config(path)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes((_IDENTITY + "[discovery]\n" + _ENDPOINTS).encode() + b"# \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte \d+\)") as caught:
        load_agent_config(path)
    assert "\n" not in str(caught.value)


def test_lists_of_strings_still_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        _IDENTITY
        + "[discovery]\n"
        + _ENDPOINTS
        + 'nameservers = ["10.0.0.1"]\n[agent]\nsubscribe = ["cmd/#"]\nnamed_shadows = ["config"]\n'
    )
    config = load_agent_config(path)
    assert config.subscribe == ("cmd/#",)
    assert config.named_shadows == ("config",)
    assert config.discovery.nameservers == ("10.0.0.1",)
