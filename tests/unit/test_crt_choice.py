"""Choosing the transport: ``[mqtt] transport``, ``--transport``, and the crt extra missing."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

import device_agent._crt as crt_module
from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    IdentityConfig,
    MQTTConfig,
    load_agent_config,
)
from device_agent._endpoints import Endpoint
from device_agent._errors import ConfigError
from device_agent._paho import PahoTransport
from device_agent._transport import alpn_protocols, transport_factory_for
from device_agent.cli import _pubsub_config, main

_TOML = """
[identity]
client_id = "dev-1"
cert = "dev.crt"
key = "dev.key"
ca = "ca.crt"

[discovery]
endpoints = { us-east-1 = "east.example", us-west-2 = "west.example" }
"""


def _config(transport: Any = "paho") -> AgentConfig:
    here = Path("x.pem")
    return AgentConfig(
        identity=IdentityConfig(client_id="d", cert_path=here, key_path=here, ca_path=here),
        discovery=DiscoveryConfig(
            endpoints={r: Endpoint(r, f"{r}.example") for r in ("us-east-1", "us-west-2")}
        ),
        mqtt=MQTTConfig(transport=transport),
    )


def test_agent_toml_chooses_the_transport(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(_TOML)
    assert load_agent_config(path).mqtt.transport == "paho"
    path.write_text(_TOML + '[mqtt]\ntransport = "crt"\n')
    assert load_agent_config(path).mqtt.transport == "crt"
    path.write_text(_TOML + '[mqtt]\ntransport = "grpc"\n')
    with pytest.raises(ConfigError, match=r'agent\.toml: MQTTConfig\.transport must be "paho"'):
        load_agent_config(path)


def test_the_factory_follows_the_configuration() -> None:
    pytest.importorskip("awscrt", reason="the crt extra (awscrt) is not installed")
    assert transport_factory_for(_config("paho")) is PahoTransport
    factory = transport_factory_for(_config("crt"))
    assert isinstance(factory, crt_module.CrtTransportFactory)
    assert factory.cert_path == Path("x.pem")


def test_crt_without_awscrt_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def refuse(name: str, package: str | None = None) -> Any:
        if name.startswith("awscrt"):
            msg = f"No module named {name!r}"
            raise ImportError(msg)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(ConfigError, match=r"pip install 'iotdr\[crt\]'") as info:
        transport_factory_for(_config("crt"))
    assert "\n" not in str(info.value)


def test_alpn_is_offered_on_443_only() -> None:
    assert alpn_protocols(443) == ("x-amzn-mqtt-ca",)
    assert alpn_protocols(8883) == ()


def test_agent_run_takes_transport_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import device_agent._daemon as daemon

    path = tmp_path / "agent.toml"
    path.write_text(_TOML)
    seen: list[AgentConfig] = []

    async def fake_run(config: AgentConfig, **_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr(daemon, "run_daemon", fake_run)
    assert main(["agent", "run", "--config", str(path), "--transport", "crt"]) == 0
    assert main(["agent", "run", "--config", str(path)]) == 0
    assert [c.mqtt.transport for c in seen] == ["crt", "paho"]
    assert main(["agent", "run", "--config", str(path), "--transport", "mqttx"]) == 2


def test_agent_pubsub_takes_transport() -> None:
    options: dict[str, Any] = {
        "endpoints": ("us-east-1=east.example", "us-west-2=west.example"),
        "port": 8883,
        "dns_server": None,
        "dr_mode": False,
        "stability_window_s": None,
        "client_id": "d",
        "cert": Path("c"),
        "key": Path("k"),
        "root_ca": Path("a"),
        "cname": None,
        "outbox": None,
        "transport": "crt",
    }
    assert _pubsub_config(options).mqtt.transport == "crt"
