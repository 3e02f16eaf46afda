"""Per-region TLS settings: the server name (custom domains), ALPN, and how agent.toml sets them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from device_agent._client import FailoverClient
from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    IdentityConfig,
    MQTTConfig,
    load_agent_config,
)
from device_agent._endpoints import Endpoint
from device_agent._errors import ConfigError
from device_agent._transport import ConnectParams

EAST = "a1-ats.iot.us-east-1.amazonaws.com"
WEST = "a1-ats.iot.us-west-2.amazonaws.com"

_TOML = """
[identity]
client_id = "dev-1"
cert = "dev.crt"
key = "dev.key"
ca = "ca.crt"

[discovery]
endpoints = { us-east-1 = "a1-ats.iot.us-east-1.amazonaws.com:443", us-west-2 = "w.example" }
"""


def test_the_tls_name_is_the_host_unless_a_server_name_is_set() -> None:
    assert Endpoint("us-east-1", EAST).tls_name == EAST
    custom = Endpoint("us-east-1", EAST, 443, server_name="IoT.Example.com.")
    assert custom.tls_name == "iot.example.com"
    assert custom.host == EAST  # where the socket goes is unchanged
    params = ConnectParams(
        endpoint=custom,
        address="192.0.2.1",
        client_id="d",
        ssl_context=ssl.create_default_context(),
    )
    assert params.server_name == "iot.example.com"


@pytest.mark.parametrize("bad", ["", "under_score.example", "a..b", "space d.example"])
def test_a_server_name_must_be_a_host_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="server name"):
        Endpoint("us-east-1", EAST, server_name=bad)


def test_alpn_is_x_amzn_mqtt_ca_on_443_unless_configured() -> None:
    assert Endpoint("us-east-1", EAST, 443).alpn_protocols == ("x-amzn-mqtt-ca",)
    assert Endpoint("us-east-1", EAST, 8883).alpn_protocols == ()
    assert Endpoint("us-east-1", EAST, 9443, alpn=("x-amzn-mqtt-ca",)).alpn_protocols == (
        "x-amzn-mqtt-ca",
    )
    assert Endpoint("us-east-1", EAST, 443, alpn=()).alpn_protocols == ()


def test_agent_toml_sets_server_names_suffixes_and_alpn(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        _TOML
        + 'server_names = { us-east-1 = "iot.example.com" }\n'
        + 'endpoint_suffixes = ["amazonaws.com", "example.com"]\n'
        + '[mqtt]\nalpn = ["x-amzn-mqtt-ca"]\n'
    )
    config = load_agent_config(path)
    assert config.discovery.server_names == {"us-east-1": "iot.example.com"}
    assert config.discovery.endpoint_suffixes == ("amazonaws.com", "example.com")
    assert config.mqtt.alpn == ("x-amzn-mqtt-ca",)
    defaults = DiscoveryConfig(name="iot.example.com")
    assert defaults.endpoint_suffixes == ("amazonaws.com", "amazonaws.com.cn")
    assert MQTTConfig().alpn is None


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('endpoint_suffixes = "amazonaws.com"\n', "endpoint_suffixes"),  # a string, not a list
        ("endpoint_suffixes = [1]\n", "endpoint_suffixes"),
        ('server_names = "iot.example.com"\n', "server_names"),
        ('[mqtt]\nalpn = "x-amzn-mqtt-ca"\n', "alpn"),
    ],
)
def test_agent_toml_names_the_key_of_a_wrong_type(tmp_path: Path, extra: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_TOML + extra)
    with pytest.raises(ConfigError, match=key) as caught:
        load_agent_config(path)
    assert "\n" not in str(caught.value)


def _client(server_names: dict[str, str], alpn: tuple[str, ...] | None) -> FailoverClient:
    here = Path("unused.pem")
    config = AgentConfig(
        identity=IdentityConfig(client_id="d", cert_path=here, key_path=here, ca_path=here),
        discovery=DiscoveryConfig(
            endpoints={
                "us-east-1": Endpoint("us-east-1", EAST, 443),
                "us-west-2": Endpoint("us-west-2", WEST, 8883),
            },
            server_names=server_names,
        ),
        mqtt=MQTTConfig(alpn=alpn),
    )
    return FailoverClient(config, ssl_context=ssl.create_default_context())


async def test_each_region_connects_with_its_server_name_and_the_configured_alpn() -> None:
    client = _client({"us-east-1": "iot.example.com"}, None)
    east, west = client._endpoint_for("us-east-1"), client._endpoint_for("us-west-2")
    assert east is not None
    assert west is not None
    assert (east.host, east.tls_name, east.alpn_protocols) == (
        EAST,
        "iot.example.com",
        ("x-amzn-mqtt-ca",),
    )
    assert (west.tls_name, west.alpn_protocols) == (WEST, ())
    forced = _client({}, ("x-amzn-mqtt-ca",))._endpoint_for("us-west-2")
    assert forced is not None
    assert forced.alpn_protocols == ("x-amzn-mqtt-ca",)
    await client.close()
