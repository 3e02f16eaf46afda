"""Health probes of increasing depth: TCP, TLS, MQTT CONNECT/CONNACK, publish/subscribe round trip.

Each probe has one deadline and reports its latency and, when it fails, the
kind of failure (refused, timeout, tls, not_authorized, ...), so a region
that refuses is told apart from one that is silent. Probes of the region the
device is connected to use the live connection (a second CONNECT with the
same client ID would knock the device's own session off); probes of another
region open a connection of their own with the device's identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device_agent._tls import open_tcp, open_tls
from device_agent._transport import (
    ConnectError,
    ConnectParams,
    MQTTProtocol,
    Transport,
    TransportCallbacks,
    TransportClosedError,
    TransportFactory,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_agent._endpoints import Endpoint
    from device_agent._machine import ProbeDepth

__all__ = ["ProbeEchoes", "ProbeOutcome", "Prober"]


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """One probe's result.

    Attributes:
        region: the region probed.
        depth: how deep it went: tcp, tls, mqtt or roundtrip.
        ok: whether every step passed.
        kind: the failure kind when not ok.
        latency_s: time to pass (or to fail).
        detail: the failure in words.
    """

    region: str
    depth: ProbeDepth
    ok: bool
    latency_s: float
    kind: str | None = None
    detail: str = ""


class ProbeEchoes:
    """The round trip of a probe: a nonce published on the probe topic, waited for back.

    Both probers (the sockets' and the in-memory network's) use it, so an echo is
    recognised the same way everywhere.

    Args:
        topic: the round-trip topic (the device subscribes to it on every connection).
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._waiting: dict[bytes, asyncio.Future[None]] = {}

    def __repr__(self) -> str:
        return f"ProbeEchoes({self.topic!r}, waiting={len(self._waiting)})"

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed received messages; True if it was a probe echo (and is consumed)."""
        if topic != self.topic:
            return False
        waiter = self._waiting.pop(payload, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def roundtrip(self, transport: Transport) -> None:
        """Publish a nonce on ``transport`` and wait for it to come back."""
        nonce = os.urandom(8).hex().encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = waiter
        try:
            await transport.publish(self.topic, nonce, 0)
            await waiter
        finally:
            self._waiting.pop(nonce, None)


class Prober:
    """Runs probes for one device identity.

    Args:
        client_id: the device's client ID (MQTT probes of another region use it).
        ssl_context: the device's TLS context (client certificate, verification on).
        transport_factory: builds MQTT connections.
        timeout_s: each probe's deadline.
        topic: the round-trip topic.
        keepalive_s: keep-alive for probe connections.
        timer: monotonic clock for latencies.
        source_address: the local IP address every probe's socket binds to
            (any free port); None lets the system choose.
        protocol: the MQTT level of MQTT-depth probes.
    """

    def __init__(
        self,
        *,
        client_id: str,
        ssl_context: ssl.SSLContext,
        transport_factory: TransportFactory,
        timeout_s: float,
        topic: str,
        keepalive_s: int = 30,
        timer: Callable[[], float] = time.monotonic,
        source_address: str | None = None,
        protocol: MQTTProtocol = "3.1.1",
    ) -> None:
        self.client_id = client_id
        self.source_address = source_address
        self.protocol: MQTTProtocol = protocol
        self.topic = topic
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._factory = transport_factory
        self._keepalive_s = keepalive_s
        self._timer = timer
        self._echoes = ProbeEchoes(topic)

    def __repr__(self) -> str:
        return f"Prober(client_id={self.client_id!r}, topic={self.topic!r})"

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed received messages; True if it was a probe echo (and is consumed)."""
        return self._echoes.on_message(topic, payload)

    async def probe(
        self,
        endpoint: Endpoint,
        address: str,
        depth: ProbeDepth,
        *,
        live: Transport | None = None,
    ) -> ProbeOutcome:
        """Probe ``endpoint`` (at ``address``) to ``depth``; never raises.

        Args:
            endpoint: region, host name (verified, SNI) and port.
            address: the IP address to connect to.
            depth: tcp, tls, mqtt or roundtrip.
            live: the device's connection to this region, for a round trip
                without a second CONNECT.
        """
        started = self._timer()
        try:
            async with asyncio.timeout(self.timeout_s):
                if depth == "roundtrip" and live is not None:
                    await self._echoes.roundtrip(live)
                elif depth == "tcp":
                    await self._tcp(endpoint, address)
                elif depth == "tls":
                    await self._tls(endpoint, address)
                else:
                    await self._mqtt(endpoint, address, roundtrip=depth == "roundtrip")
        except TimeoutError:
            return self._failed(
                endpoint, depth, started, "timeout", f"no answer in {self.timeout_s:g} s"
            )
        except ConnectError as exc:
            return self._failed(endpoint, depth, started, exc.kind, str(exc))
        except TransportClosedError as exc:
            return self._failed(endpoint, depth, started, "closed", str(exc))
        except ssl.SSLCertVerificationError as exc:
            return self._failed(endpoint, depth, started, "tls", exc.verify_message or str(exc))
        except ssl.SSLError as exc:
            return self._failed(endpoint, depth, started, "tls", str(exc))
        except ConnectionRefusedError:
            return self._failed(endpoint, depth, started, "refused", "connection refused")
        except OSError as exc:
            return self._failed(endpoint, depth, started, "unreachable", exc.strerror or str(exc))
        return ProbeOutcome(endpoint.region, depth, ok=True, latency_s=self._timer() - started)

    async def _tcp(self, endpoint: Endpoint, address: str) -> None:
        (await open_tcp(address, endpoint.port, self.source_address)).close()

    async def _tls(self, endpoint: Endpoint, address: str) -> None:
        # The endpoint's TLS name and ALPN, as its connections have them (port 443).
        tls = await open_tls(endpoint, address, self._ssl, source_address=self.source_address)
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.unwrap()
        tls.close()

    async def _mqtt(self, endpoint: Endpoint, address: str, *, roundtrip: bool) -> None:
        params = ConnectParams(
            endpoint=endpoint,
            address=address,
            client_id=self.client_id,
            ssl_context=self._ssl,
            keepalive_s=self._keepalive_s,
            clean_session=True,
            timeout_s=self.timeout_s,
            source_address=self.source_address,
            protocol=self.protocol,
        )

        def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            del qos, retain
            self.on_message(topic, payload)

        callbacks = TransportCallbacks(on_message=on_message, on_lost=lambda _kind: None)
        transport = self._factory(params, callbacks)
        try:
            await transport.connect()
            if roundtrip:
                await transport.subscribe(self.topic, 0)
                await self._echoes.roundtrip(transport)
        finally:
            await transport.disconnect()

    def _failed(
        self, endpoint: Endpoint, depth: ProbeDepth, started: float, kind: str, detail: str
    ) -> ProbeOutcome:
        return ProbeOutcome(
            endpoint.region,
            depth,
            ok=False,
            latency_s=self._timer() - started,
            kind=kind,
            detail=detail,
        )
