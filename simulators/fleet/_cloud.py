"""The cloud side of a fleet run: every numbered telemetry message that reaches a region.

One MQTT subscriber per region on the broker's plain listener (behind the
door, where an IoT rule would see the message) counts each arrival of
``iotdr/sim/<device>/telemetry`` with its ``seq``. The report compares these
with what the devices say they sent: lost, duplicated, delivered over time.
A payload that is not ours is counted as malformed, never raised.

Shards of one fleet share the regions, so each shard's counter takes client
IDs of its own (a second session with the same ID would take the first one
over) and keeps only its own devices' arrivals (every shard's subscriber sees
every message; the merge then adds the shards up exactly). Against AWS IoT
the counter connects over mTLS (:class:`CounterTLS`), with an identity
allowed to subscribe to the telemetry.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators._errors import SimulatorError
from simulators.fleet._records import Arrival

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["CloudCounter", "CountedArrivals", "CounterTLS"]

TELEMETRY_FILTER = "iotdr/sim/+/telemetry"


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


class CloudCounter:
    """Counts telemetry arrivals in each region.

    Args:
        brokers: per region, its broker's plain listener ``(host, port)``.
        t0: subtracted from ``time.monotonic()`` to stamp arrivals (0: raw monotonic time).
        client_id: the client ID's stem; each region's is ``<stem>-<region>``.
        keep: whether a device's arrivals are this counter's (None: all).
        tls: connect over mTLS with this identity (None: plain MQTT, the local brokers).
    """

    def __init__(
        self,
        brokers: Mapping[str, tuple[str, int]],
        *,
        t0: float = 0.0,
        client_id: str = "iotdr-fleet-counter",
        keep: Callable[[str], bool] | None = None,
        tls: CounterTLS | None = None,
    ) -> None:
        self.t0 = t0
        self.client_id = client_id
        self.keep = keep
        self.tls = tls
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self.malformed = 0
        self._clients: dict[str, mqtt.Client] = {}
        self._subscribed: dict[str, threading.Event] = {}
        self._brokers = dict(brokers)

    def __repr__(self) -> str:
        return f"CloudCounter(regions={list(self._brokers)}, arrivals={len(self._arrivals)})"

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
        t = time.monotonic() - self.t0
        parts = message.topic.split("/")
        if self.keep is not None and len(parts) == 4 and not self.keep(parts[2]):
            return
        try:
            seq = json.loads(message.payload)["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or len(parts) != 4:
                raise TypeError(seq)  # noqa: TRY301 - one path for every malformed payload
        except (ValueError, TypeError, KeyError, RecursionError):
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            self._arrivals.append(Arrival(round(t, 4), region, parts[2], seq))

    def count(self) -> int:
        """Arrivals so far."""
        with self._lock:
            return len(self._arrivals)

    def arrivals(self) -> list[Arrival]:
        """A copy of every arrival so far."""
        with self._lock:
            return list(self._arrivals)

    def settle(self, quiet_s: float = 2.0, limit_s: float = 30.0) -> None:
        """Wait until no message arrived for ``quiet_s`` (at most ``limit_s``)."""
        deadline = time.monotonic() + limit_s
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def stop(self) -> None:
        """Disconnect everywhere."""
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()
        self._clients.clear()


class CountedArrivals:
    """A stage's ``delivered`` and ``settle`` from its :class:`CloudCounter` (None: not yet)."""

    counter: CloudCounter | None

    def delivered(self) -> int:
        """The arrivals its counter has seen so far."""
        return self.counter.count() if self.counter is not None else 0

    async def settle(self) -> list[Arrival]:
        """Wait for the last messages; every arrival its counter saw."""
        if self.counter is None:
            return []
        await asyncio.to_thread(self.counter.settle)
        return self.counter.arrivals()
