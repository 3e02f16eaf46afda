"""The AWS Common Runtime transport: one ``awscrt.mqtt5.Client`` per connection.

What production devices on AWS run (the AWS IoT Device SDK v2 is built on
it), behind the agent's :class:`~device_agent.Transport` interface, so the
FailoverMachine decides and the CRT only carries MQTT 5:

- **A client per connection.** A CRT client's configuration, its host name
  included, cannot change once built: each connect builds one, and a region
  switch stops it and builds another.
- **The agent's address, the endpoint's name.** The client is given the
  endpoint's name (TLS SNI and certificate verification use it; a custom
  domain's name when the region has one) and reaches the address the agent
  resolved through a one-connection local tunnel
  (:mod:`device_agent._crt_tunnel`): the CRT's own resolver cannot be pointed
  at the agent's nameservers.
- **The agent's deadline.** TCP, TLS and CONNACK within
  ``params.timeout_s``; the CRT reports no failure at all when it rejects
  the server's certificate (it stalls), so the deadline is ours, and the
  tunnel tells a rejected certificate (the client went silent after the
  server's first TLS flight) from a silent broker.
- **No reconnect of its own.** The tunnel refuses a second connection, the
  client's reconnect delay is an hour, and the client is stopped on the
  first failure or loss: reconnecting is the FailoverMachine's decision.
- **TLS contexts shared.** A :class:`CrtTransportFactory` holds one
  ``ClientTlsContext`` per ALPN list for its identity (loading a key and
  certificate chain is the expensive part of a connect), and every
  transport it builds uses them.
- **Port 443.** ALPN ``x-amzn-mqtt-ca`` is offered on port 443, where AWS
  IoT needs it for MQTT with a client certificate.

CRT callbacks run on the CRT's threads; each is handed to the event loop
with ``call_soon_threadsafe`` and nothing else happens on those threads.
awscrt is an optional extra (``iotdr[crt]``): it is imported when a factory
is built, and its absence is a :class:`ConfigError` naming the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import TYPE_CHECKING, Any

from device_agent._crt_tunnel import USERNAME, Tunnel
from device_agent._errors import ConfigError, DeviceAgentError
from device_agent._transport import (
    ConnectError,
    ConnectErrorKind,
    ConnectParams,
    PublishRefusedError,
    TransportCallbacks,
    TransportClosedError,
    deliver,
)

if TYPE_CHECKING:
    import concurrent.futures
    from pathlib import Path
    from types import ModuleType

    from device_agent._config import IdentityConfig

__all__ = ["CrtTransport", "CrtTransportFactory"]

logger = logging.getLogger(__name__)

# The CRT must never reconnect by itself (the tunnel refuses it anyway): an hour.
_NO_RECONNECT_MS = 3_600_000
_STOP_WAIT_S = 1.0
# MQTT 5 CONNACK reason codes.
_NOT_AUTHORIZED = frozenset({0x86, 0x87, 0x8A, 0x8C})  # bad user/password, not authorized, banned
_THROTTLED = frozenset({0x97, 0x89})  # quota exceeded (AWS's CONNECT throttling), server busy
# MQTT 5 reason codes from 0x80 up are failures (a PUBACK's too: the message was refused).
_FIRST_FAILURE = 0x80
# awscrt error names: what they mean for a connect attempt.
_ERROR_KINDS: dict[str, ConnectErrorKind] = {
    "AWS_IO_SOCKET_CONNECTION_REFUSED": "refused",
    "AWS_IO_SOCKET_TIMEOUT": "timeout",
    "AWS_IO_SOCKET_NO_ROUTE_TO_HOST": "unreachable",
    "AWS_IO_SOCKET_NETWORK_DOWN": "unreachable",
    "AWS_IO_DNS_INVALID_NAME": "dns",
    "AWS_IO_DNS_QUERY_FAILED": "dns",
    "AWS_ERROR_MQTT5_CONNACK_TIMEOUT": "timeout",
    "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE": "tls",
    "AWS_IO_TLS_ERROR_ALERT_RECEIVED": "not_authorized",
    # Before CONNACK: the server ended TLS after our certificate (TLS 1.3 sends its
    # refusal after the client's side of the handshake is done), as paho's "alert".
    "AWS_IO_TLS_ERROR_READ_FAILURE": "not_authorized",
}


def _crt() -> tuple[ModuleType, ModuleType, ModuleType]:
    """The mqtt5, io and http modules of awscrt, or a ConfigError naming the extra."""
    try:
        return (
            importlib.import_module("awscrt.mqtt5"),
            importlib.import_module("awscrt.io"),
            importlib.import_module("awscrt.http"),
        )
    except ImportError as exc:
        msg = f"transport 'crt' needs the AWS Common Runtime: pip install 'iotdr[crt]' ({exc})"
        raise ConfigError(msg) from exc


class CrtTransportFactory:
    """Builds :class:`CrtTransport` connections for one device identity.

    Pass it as ``transport_factory`` to :class:`~device_agent.FailoverClient`.
    The TLS contexts (one per ALPN list) are built on first use and shared
    by every connection and probe of this identity.

    Args:
        cert_path: the device certificate (PEM).
        key_path: its private key (PEM).
        ca_path: the CA that signs the endpoints' server certificates.

    Raises:
        ConfigError: awscrt is not installed.
    """

    def __init__(self, *, cert_path: Path, key_path: Path, ca_path: Path) -> None:
        self._mqtt5, self._io, self._http = _crt()
        self.cert_path = cert_path
        self.key_path = key_path
        self.ca_path = ca_path
        self._contexts: dict[tuple[str, ...], Any] = {}

    @classmethod
    def from_identity(cls, identity: IdentityConfig) -> CrtTransportFactory:
        """The factory for the agent configuration's identity."""
        return cls(
            cert_path=identity.cert_path, key_path=identity.key_path, ca_path=identity.ca_path
        )

    def __repr__(self) -> str:
        return f"CrtTransportFactory(cert={self.cert_path}, contexts={len(self._contexts)})"

    def __call__(self, params: ConnectParams, callbacks: TransportCallbacks) -> CrtTransport:
        """One connection (see :data:`device_agent.TransportFactory`)."""
        return CrtTransport(params, callbacks, factory=self)

    def tls_context(self, alpn: tuple[str, ...]) -> Any:
        """The identity's ``ClientTlsContext`` offering ``alpn`` (built once).

        Raises:
            ConfigError: the certificate, key or CA cannot be loaded.
        """
        context = self._contexts.get(alpn)
        if context is not None:
            return context
        io = self._io
        try:
            options = io.TlsContextOptions.create_client_with_mtls_from_path(
                str(self.cert_path), str(self.key_path)
            )
            options.override_default_trust_store_from_path(None, str(self.ca_path))
            options.verify_peer = True
            options.min_tls_ver = io.TlsVersion.TLSv1_2
            if alpn:
                options.alpn_list = list(alpn)
            context = io.ClientTlsContext(options)
        except Exception as exc:  # awscrt raises its own error types for unreadable files
            msg = (
                f"the CRT cannot load certificate {self.cert_path}, key {self.key_path} "
                f"or CA {self.ca_path}: {exc}"
            )
            raise ConfigError(msg) from exc
        self._contexts[alpn] = context
        return context


class CrtTransport:
    """One MQTT 5 connection through the AWS Common Runtime (see the module docstring).

    Build it through a :class:`CrtTransportFactory`; connect it once.
    """

    def __init__(
        self, params: ConnectParams, callbacks: TransportCallbacks, *, factory: CrtTransportFactory
    ) -> None:
        self.params = params
        self._callbacks = callbacks
        self._factory = factory
        self._mqtt5 = factory._mqtt5
        self._loop = asyncio.get_running_loop()
        self._client: Any = None
        self._tunnel: Tunnel | None = None
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self._stopped = asyncio.Event()
        self._pending: set[asyncio.Future[Any]] = set()
        self._connected = False
        self._closing = False
        self._lost_reported = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return f"CrtTransport({self.params.endpoint}, client_id={self.params.client_id!r}, {state})"

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._connected

    # -- connect ----------------------------------------------------------------------------

    async def connect(self) -> bool:
        """TCP (through the tunnel), TLS and CONNACK within ``params.timeout_s``."""
        params = self.params
        endpoint = params.endpoint
        try:
            async with asyncio.timeout(params.timeout_s):
                self._tunnel = Tunnel(
                    address=params.address,
                    port=endpoint.port,
                    target_name=params.server_name,
                    source_address=params.source_address,
                )
                port = await self._tunnel.start()
                self._client = self._build(port)
                self._client.start()
                session_present = await self._connack_or_tunnel_failure(self._tunnel)
        except TimeoutError as exc:
            kind, detail = self._timeout_kind()
            await self._abort()
            raise ConnectError(kind, endpoint, detail) from exc
        except ConnectError:
            await self._abort()
            raise
        except asyncio.CancelledError:
            await self._abort()
            raise
        except ConfigError:
            await self._abort()
            raise
        except Exception as exc:  # awscrt's own errors while building the client
            await self._abort()
            raise ConnectError("closed", endpoint, str(exc)) from exc
        self._connected = True
        return session_present

    async def _connack_or_tunnel_failure(self, tunnel: Tunnel) -> bool:
        """The CONNACK's session flag; a failed TCP connect of the tunnel fails at once."""
        failed = tunnel.failed
        waiters: set[asyncio.Future[Any]] = {self._connack, failed}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if failed.done() and not failed.cancelled():
            # The tunnel knows best why TCP failed; the CRT only saw the proxy refuse.
            failure = failed.result()
            raise ConnectError(failure.kind, self.params.endpoint, failure.detail)
        return await self._connack

    def _build(self, proxy_port: int) -> Any:
        mqtt5, io, http = self._mqtt5, self._factory._io, self._factory._http
        params = self.params
        timeout_ms = max(1, int(params.timeout_s * 1000))
        socket_options = io.SocketOptions()
        socket_options.domain = io.SocketDomain.IPv4  # the tunnel listens on 127.0.0.1
        socket_options.connect_timeout_ms = timeout_ms
        session = (
            mqtt5.ClientSessionBehaviorType.CLEAN
            if params.clean_session
            else mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
        )
        options = mqtt5.ClientOptions(
            host_name=params.server_name,
            port=params.endpoint.port,
            socket_options=socket_options,
            tls_ctx=self._factory.tls_context(params.alpn),
            http_proxy_options=http.HttpProxyOptions(
                "127.0.0.1",
                proxy_port,
                auth_type=http.HttpProxyAuthenticationType.Basic,
                auth_username=USERNAME,
                auth_password=self._tunnel.password if self._tunnel else "",
                connection_type=http.HttpProxyConnectionType.Tunneling,
            ),
            connect_options=mqtt5.ConnectPacket(
                client_id=params.client_id,
                keep_alive_interval_sec=params.keepalive_s,
                session_expiry_interval_sec=0 if params.clean_session else 3600,
            ),
            session_behavior=session,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
            min_reconnect_delay_ms=_NO_RECONNECT_MS,
            max_reconnect_delay_ms=_NO_RECONNECT_MS,
            connack_timeout_ms=timeout_ms,
            ack_timeout_sec=0,  # no operation timeout: the agent's failure detector judges
            disable_metrics=True,  # the CONNECT's user name stays empty, as paho sends it
            on_publish_callback_fn=self._crt_publish,
            on_lifecycle_event_connection_success_fn=self._crt_success,
            on_lifecycle_event_connection_failure_fn=self._crt_failure,
            on_lifecycle_event_disconnection_fn=self._crt_disconnection,
            on_lifecycle_event_stopped_fn=self._crt_stopped,
        )
        return mqtt5.Client(options)

    def _timeout_kind(self) -> tuple[ConnectErrorKind, str]:
        tunnel = self._tunnel
        seconds = f"{self.params.timeout_s:g} s"
        if tunnel is None or not tunnel.upstream_open:
            return "timeout", f"no TCP connection within {seconds}"
        if tunnel.client_stalled:
            return "tls", (
                f"the server certificate was not accepted for {self.params.server_name} "
                "(the CRT went silent after the server's TLS handshake)"
            )
        if not tunnel.server_answered:
            return "timeout", f"no answer to the TLS handshake within {seconds}"
        return "timeout", f"no CONNACK within {seconds}"

    async def _abort(self) -> None:
        self._closing = True
        await self._stop_client()
        if self._connack.done() and not self._connack.cancelled():
            self._connack.exception()  # mark retrieved
        else:
            self._connack.cancel()

    async def _stop_client(self, *, graceful: bool = False) -> None:
        client, self._client = self._client, None
        self._fail_pending("disconnected")
        if client is not None:
            with contextlib.suppress(Exception):
                # A DISCONNECT (normal disconnection) when we leave on purpose, as paho
                # sends one; an aborted attempt just stops.
                client.stop(self._mqtt5.DisconnectPacket() if graceful else None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_WAIT_S):
                    await self._stopped.wait()
        if self._tunnel is not None:
            await self._tunnel.close()

    # -- operations ---------------------------------------------------------------------------

    def _live_client(self) -> Any:
        if not self._connected or self._client is None:
            msg = f"not connected to {self.params.endpoint.region}"
            raise TransportClosedError(msg)
        return self._client

    async def _await(self, future: concurrent.futures.Future[Any], what: str) -> Any:
        """The CRT operation's result, translated; cancelling the wait leaves the CRT's future.

        (``asyncio.wrap_future`` would cancel it, and the CRT then fails setting its result.)
        """
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(waiter)
        waiter.add_done_callback(self._pending.discard)

        def settle(done: concurrent.futures.Future[Any]) -> None:
            if waiter.done():
                return
            exception = done.exception()
            if exception is not None:
                waiter.set_exception(exception)
            else:
                waiter.set_result(done.result())

        future.add_done_callback(lambda done: self._soon(settle, done))
        try:
            return await waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the CRT fails pending operations when the connection drops
            msg = f"{what} failed: {exc}"
            raise TransportClosedError(msg) from exc

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish; returns on PUBACK (QoS 1) or once written (QoS 0)."""
        mqtt5 = self._mqtt5
        client = self._live_client()
        try:
            future = client.publish(
                mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos))
            )
        except Exception as exc:  # a closed client refuses the operation outright
            msg = f"publish to {topic} failed: {exc}"
            raise TransportClosedError(msg) from exc
        done = await self._await(future, f"publish to {topic}")
        puback = getattr(done, "puback", None)  # None for QoS 0
        code = getattr(puback, "reason_code", None)
        if code is not None and int(code) >= _FIRST_FAILURE:
            raise PublishRefusedError(topic, int(code))

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; returns the granted QoS."""
        mqtt5 = self._mqtt5
        client = self._live_client()
        packet = mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter=topic_filter, qos=mqtt5.QoS(qos))]
        )
        try:
            future = client.subscribe(packet)
        except Exception as exc:  # a closed client refuses the operation outright
            msg = f"subscribe to {topic_filter} failed: {exc}"
            raise TransportClosedError(msg) from exc
        suback = await self._await(future, f"subscribe to {topic_filter}")
        codes = list(suback.reason_codes or [])
        granted = int(codes[0]) if codes else 0x80
        if granted >= 0x80:
            msg = f"the broker refused the subscription to {topic_filter} (reason {granted:#04x})"
            raise DeviceAgentError(msg)
        return granted

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (best effort, not awaited)."""
        client = self._client
        if self._connected and client is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe(self._mqtt5.UnsubscribePacket(topic_filters=[topic_filter]))

    async def disconnect(self) -> None:
        """DISCONNECT, stop the client, close the tunnel; ``on_lost`` is not called."""
        if self._closing:
            return
        self._closing = True
        was_connected, self._connected = self._connected, False
        await self._stop_client(graceful=was_connected)

    def _fail_pending(self, why: str) -> None:
        """Fail every operation still waiting.

        The CRT keeps unacknowledged QoS 1 publishes for a session it will never
        resume; the agent's outbox resends them on the next connection.
        """
        pending, self._pending = self._pending, set()
        for waiter in pending:
            if not waiter.done():
                waiter.set_exception(TransportClosedError(why))
                waiter.exception()  # mark retrieved: the waiter may be gone

    # -- CRT callbacks: on the CRT's threads, handed to the event loop -------------------------

    def _soon(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody listens
            self._loop.call_soon_threadsafe(callback, *args)

    def _crt_publish(self, data: Any) -> None:
        packet = data.publish_packet
        self._soon(
            deliver,
            self._callbacks,
            packet.topic,
            bytes(packet.payload or b""),
            int(packet.qos),
            bool(packet.retain),
        )

    def _crt_success(self, data: Any) -> None:
        self._soon(self._on_success, bool(data.connack_packet.session_present))

    def _crt_failure(self, data: Any) -> None:
        self._soon(self._on_failure, data.connack_packet, data.exception)

    def _crt_disconnection(self, data: Any) -> None:
        self._soon(self._on_disconnection, data.disconnect_packet, data.exception)

    def _crt_stopped(self, data: Any) -> None:
        del data
        self._soon(self._stopped.set)

    # -- on the event loop --------------------------------------------------------------------

    def _on_success(self, session_present: bool) -> None:
        if not self._connack.done():
            self._connack.set_result(session_present)

    def _on_failure(self, connack: Any, exception: Any) -> None:
        if self._connack.done():
            return
        kind: ConnectErrorKind
        if connack is not None and connack.reason_code is not None:
            code = int(connack.reason_code)
            kind = "unavailable"
            if code in _NOT_AUTHORIZED:
                kind = "not_authorized"
            elif code in _THROTTLED:
                kind = "throttled"
            detail = f"CONNACK {code:#04x}"
        else:
            name = getattr(exception, "name", "") or ""
            kind = _ERROR_KINDS.get(name, "closed")
            detail = name or str(exception)
        self._connack.set_exception(ConnectError(kind, self.params.endpoint, detail))
        # No reconnect of its own: the machine decides.
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.stop()

    def _on_disconnection(self, packet: Any, exception: Any) -> None:
        was_connected = self._connected
        self._connected = False
        self._fail_pending("connection lost")
        if not was_connected or self._closing or self._lost_reported:
            return
        self._lost_reported = True
        name = getattr(exception, "name", "") or ""
        kind = "timeout" if "PING" in name or "TIMEOUT" in name else "closed"
        if packet is not None and packet.reason_code is not None:
            code = int(packet.reason_code)
            if code in _NOT_AUTHORIZED:
                kind = "not_authorized"
        logger.debug(
            "crt.disconnected", extra={"region": self.params.endpoint.region, "detail": name}
        )
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.stop()
        self._loop.call_soon(self._callbacks.on_lost, kind)
