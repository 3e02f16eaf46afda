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
