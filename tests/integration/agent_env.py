"""Two regions on loopback for the device agent's tests: brokers, fault proxies, DNS, a PKI.

Each region is a real broker (mosquitto, else amqtt) on its own loopback IP,
with a fault proxy on the same IP in front of its mTLS listener; devices
reach the proxy through the endpoint name that the project's DNS server
resolves. A watcher on each broker's plain listener records every message
that arrives in that region.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent._config import (
    AgentConfig,
    DiscoveryConfig,
    FailoverConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
    ProbeConfig,
)
from device_agent._endpoints import Endpoint
from simulators import DEFAULT_REGIONS, ThreadedFaultProxy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators import Broker
    from simulators.dns import ThreadedDNSServer
    from simulators.pytest_plugin import FleetFixture

PRIMARY, SECONDARY = (r.name for r in DEFAULT_REGIONS)


class Watcher:
    """Subscribes to ``#`` on a region's plain listener and keeps what arrives."""

    def __init__(self, region: str, host: str, port: int) -> None:
        self.region = region
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{region}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._ready.wait(10), f"watcher for {region} did not connect"

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe("#", qos=1)
        self._ready.set()

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def numbers(self, topic_prefix: str) -> list[int]:
        """The ``n`` of every JSON message received under ``topic_prefix``."""
        with self._lock:
            found = list(self.messages)
        return [json.loads(p)["n"] for t, p in found if t.startswith(topic_prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Regions:
    """The two regions, their proxies, the DNS server and the fleet PKI."""

    brokers: dict[str, Broker]
    proxies: dict[str, ThreadedFaultProxy]
    watchers: dict[str, Watcher]
    dns: ThreadedDNSServer
    fleet: FleetFixture
    state: Path
    _issued: dict[str, Any] = field(default_factory=dict)

    def config(self, client_id: str, **failover: Any) -> AgentConfig:
        """An agent configuration for a device of this fleet, quick settings for tests."""
        device = self._issued.get(client_id) or self.fleet.pki.issue_device(client_id)
        self._issued[client_id] = device
        endpoints = {
            r.name: Endpoint(r.name, r.endpoint, self.proxies[r.name].port) for r in DEFAULT_REGIONS
        }
        quick: dict[str, Any] = {
            "probe_interval_s": 1.0,
            "failback_probe_interval_s": 0.5,
            "failback_spread_s": 0.0,  # one device: no fleet to spread
            "stability_window_s": 2.0,
            "dns_poll_interval_s": 0.5,
            "dr_jitter_s": 1.0,
        }
        return AgentConfig(
            identity=IdentityConfig(
                client_id=client_id,
                cert_path=device.cert_path,
                key_path=device.key_path,
                ca_path=self.fleet.pki.ca_path,
            ),
            discovery=DiscoveryConfig(
                name="iot.iotdr.test",
                nameservers=(self.dns.host,),
                port=self.dns.port,
                timeout_s=1.0,
                endpoints=endpoints,
            ),
            failover=FailoverConfig(**{**quick, **failover}),
            probe=ProbeConfig(timeout_s=0.8),
            mqtt=MQTTConfig(connect_timeout_s=2.0),
            outbox=OutboxConfig(path=self.state / f"{client_id}.outbox", synchronous="normal"),
        )

    def with_defaults(self, client_id: str) -> AgentConfig:
        """The same device with the library's default failover settings."""
        config = self.config(client_id)
        return dataclasses.replace(
            config, failover=FailoverConfig(), probe=ProbeConfig(), mqtt=MQTTConfig()
        )


@pytest.fixture
def regions(
    region_brokers: dict[str, Broker],
    fleet_pki: FleetFixture,
    dns_server: ThreadedDNSServer,
    tmp_path: Path,
) -> Iterator[Regions]:
    """Two running regions with fault proxies and watchers; everything stopped afterwards."""
    proxies: dict[str, ThreadedFaultProxy] = {}
    watchers: dict[str, Watcher] = {}
    try:
        for region in DEFAULT_REGIONS:
            broker = region_brokers[region.name]
            assert broker.tls_port is not None
            proxy = ThreadedFaultProxy(
                target_host=broker.host, target_port=broker.tls_port, listen_host=region.host
            )
            proxy.start()
            proxies[region.name] = proxy
            watchers[region.name] = Watcher(region.name, broker.host, broker.port)
        yield Regions(region_brokers, proxies, watchers, dns_server, fleet_pki, tmp_path)
    finally:
        for watcher in watchers.values():
            watcher.close()
        for proxy in proxies.values():
            proxy.stop()


def start_agent_daemon(
    regions: Regions,
    tmp_path: Path,
    client_id: str,
    *,
    heartbeat_topic: str,
    heartbeat_interval_s: float,
    outbox: str = "",
) -> subprocess.Popen[str]:
    """``iotdr agent run --json`` for ``client_id`` on the test's regions (cwd ``tmp_path``).

    Its agent.toml (in ``tmp_path``) keeps the outbox in ``outbox.db`` and the
    status in ``status.json``; ``outbox`` adds lines to its ``[outbox]`` table.
    """
    identity = regions.config(client_id).identity
    endpoints = "\n".join(
        f'"{r.name}" = "{r.endpoint}:{regions.proxies[r.name].port}"' for r in DEFAULT_REGIONS
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[identity]
client_id = "{client_id}"
cert = "{identity.cert_path}"
key = "{identity.key_path}"
ca = "{identity.ca_path}"

[discovery]
name = "iot.iotdr.test"
dns_server = "{regions.dns.host}:{regions.dns.port}"

[discovery.endpoints]
{endpoints}

[outbox]
path = "outbox.db"
{outbox}

[agent]
status_path = "status.json"
heartbeat_topic = "{heartbeat_topic}"
heartbeat_interval_s = {heartbeat_interval_s}
"""
    )
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "agent", "run", "--config", str(config),
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
    )  # fmt: skip
