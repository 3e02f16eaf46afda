"""The cloud-side counter of a run that shares its regions: its own client IDs, its own devices.

:class:`~simulators.fleet._cloud.CloudCounter` counts every telemetry
arrival under one client ID per region. Shards of one fleet share the
regions, so each shard's counter needs client IDs of its own (a second
session with the same ID would take the first one over) and keeps only its
own devices' arrivals (every shard's subscriber sees every message; the
merge then adds the shards up exactly). Against AWS IoT the counter
connects over mTLS, with an identity allowed to subscribe to the telemetry.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators._errors import SimulatorError
from simulators.fleet._cloud import TELEMETRY_FILTER, CloudCounter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["CounterTLS", "FleetCounter"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterTLS:
    """The counter's mTLS identity (AWS IoT: a certificate whose policy allows the subscription).

    Attributes:
        ca: the CA the regions' server certificates chain to (Amazon Root CA 1).
        cert: the counter's client certificate.
        key: its key.
    """

    ca: Path
    cert: Path
    key: Path


class FleetCounter(CloudCounter):
    """A :class:`CloudCounter` with client IDs of its own, keeping only the devices ``keep`` says.

    Args:
        brokers: per region, ``(host, port)`` to subscribe at.
        client_id: the client ID's stem; each region's is ``<stem>-<region>``.
        keep: whether a device's arrivals are this counter's (None: all).
        tls: connect over mTLS with this identity (None: plain MQTT, the local brokers).
    """

    def __init__(
        self,
        brokers: Mapping[str, tuple[str, int]],
        *,
        client_id: str,
        keep: Callable[[str], bool] | None = None,
        tls: CounterTLS | None = None,
    ) -> None:
        super().__init__(brokers)
        self.client_id = client_id
        self.keep = keep
        self.tls = tls

    def __repr__(self) -> str:
        return f"FleetCounter({self.client_id!r}, arrivals={self.count()})"

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe in every region; return once the subscriptions are granted."""
        for region, (host, port) in self._brokers.items():
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"{self.client_id}-{region}",
                clean_session=True,
            )
            if self.tls is not None:
                client.tls_set(
                    ca_certs=str(self.tls.ca),
                    certfile=str(self.tls.cert),
                    keyfile=str(self.tls.key),
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            client.max_inflight_messages_set(100)
            granted = self._subscribed[region] = threading.Event()
            client.on_connect = lambda c, *_a: c.subscribe(TELEMETRY_FILTER, qos=1)
            client.on_subscribe = lambda *_a, _g=granted: _g.set()
            client.on_message = lambda _c, _u, m, _r=region: self._on_message(_r, m)
            try:
                client.connect(host, port, keepalive=60)
            except (OSError, ssl.SSLError) as exc:
                self.stop()
                msg = f"the fleet's counter cannot reach {region} at {host}:{port}: {exc}"
                raise SimulatorError(msg) from exc
            client.loop_start()
            self._clients[region] = client
        deadline = time.monotonic() + timeout_s
        for region, event in self._subscribed.items():
            if not event.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                msg = f"the fleet's counter was not subscribed in {region} within {timeout_s} s"
                raise SimulatorError(msg)

    def _on_message(self, region: str, message: mqtt.MQTTMessage) -> None:
        if self.keep is not None:
            parts = message.topic.split("/")
            if len(parts) == 4 and not self.keep(parts[2]):
                return
        super()._on_message(region, message)
