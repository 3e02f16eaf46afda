"""The paho-mqtt transport, driven by asyncio without ever blocking the event loop.

paho's own ``connect()`` opens its socket and does the TLS handshake
synchronously: measured, 20 clients connecting to a blackholed broker froze a
shared event loop for 40 s. Here the socket is opened with
``loop.sock_connect`` and the TLS handshake is stepped on readiness
callbacks, all under one deadline; paho is then handed the ready socket
(``_create_socket`` is overridden) and only encodes and decodes MQTT. Its
socket I/O runs from the event loop's reader and writer callbacks, and
``loop_misc`` (keep-alive) from one housekeeping task per event loop for all
its connections, once a second: paho's own network thread is never started.
A host of thousands of devices (the fleet simulator) would otherwise wake a
task per device every second, more wake-ups than messages. A publish is
written from a callback scheduled at once (``call_soon``; several publishes
of one loop iteration in one write), and only a write the socket cannot take
whole waits for writability (``add_writer``): watching every socket for
writability per publish costs two system calls each.

TLS is verified against the endpoint's TLS name (its host name, or the
custom domain configured for its region), which is also the SNI, while the
socket goes to the address the agent resolved itself; ALPN ``x-amzn-mqtt-ca``
is offered on port 443.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from device_agent._errors import DeviceAgentError
from device_agent._tls import open_tcp, step_handshake, wrap_client
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
    from collections.abc import Callable

    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode


__all__ = ["PahoTransport"]

logger = logging.getLogger(__name__)

_MISC_INTERVAL_S = 1.0
# CONNACK reason codes (MQTT 3.1.1 return codes as paho maps them to reason codes).
_NOT_AUTHORIZED = {"Not authorized", "Bad user name or password", "Banned"}
# MQTT 5 CONNACK: 0x97 quota exceeded (AWS IoT's CONNECT throttling), 0x89 server busy.
# MQTT 3.1.1 has no such code: AWS closes the connection without a CONNACK ("closed").
_THROTTLED = {0x97, 0x89}
# MQTT 5 reason codes from 0x80 up are failures (a PUBACK's too: the message was refused).
_FIRST_FAILURE = 0x80


class _Housekeeping:
    """paho's ``loop_misc`` (keep-alive PINGREQ, ping timeout) for every connection of one loop.

    One task per event loop, alive while a connection is registered. It ticks
    every ``_MISC_INTERVAL_S`` and checks each connection every
    ``keepalive / 10`` ticks (at least every tick), at a phase of its own: a
    PINGREQ leaves at most a tenth of the keep-alive late, well inside the
    broker's allowance of 1.5 keep-alives, and 20,000 connections with the
    default 60 s keep-alive cost 3,300 checks a second instead of 20,000. A
    connection whose ``loop_misc`` fails (closed) or raises is dropped from
    the round, the others stay.
    """

    _per_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Housekeeping]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clients: dict[int, tuple[mqtt.Client, int, int]] = {}  # id: client, every, phase
        self._added = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Housekeeping:
        keeping = cls._per_loop.get(loop)
        if keeping is None:
            keeping = cls._per_loop[loop] = cls(loop)
        return keeping

    def add(self, client: mqtt.Client, keepalive_s: float) -> None:
        every = max(1, int(keepalive_s / 10 / _MISC_INTERVAL_S))
        self._added += 1
        self._clients[id(client)] = (client, every, self._added % every)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run())

    def discard(self, client: mqtt.Client) -> None:
        self._clients.pop(id(client), None)
        if not self._clients and self._task is not None:
            # The last connection went: the task goes now, not at its next tick, so a
            # loop closed right after finds nothing pending.
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        tick = 0
        while self._clients:
            await asyncio.sleep(_MISC_INTERVAL_S)
            tick += 1
            for key, (client, every, phase) in list(self._clients.items()):
                if tick % every != phase:
                    continue
                try:
                    ok = client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS
                except Exception:  # one connection's failure must not stop the others'
                    logger.exception("paho housekeeping failed for %s", client)
                    ok = False
                if not ok:
                    self._clients.pop(key, None)
        self._task = None


class _Client(mqtt.Client):
    """paho's client, given a socket that is already connected and through TLS."""

    _ready_socket: ssl.SSLSocket | None = None
    on_pingresp: Callable[[], None] | None = None

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.on_pingresp is not None:
            self.on_pingresp()
        return rc

    def _create_socket(self) -> Any:
        sock, self._ready_socket = self._ready_socket, None
        if sock is None:
            msg = "no connection prepared"
            raise OSError(msg)
        return sock


class PahoTransport:
    """One MQTT connection through paho-mqtt (MQTT 3.1.1 or 5), asyncio-driven.

    Build one per connection (see :data:`device_agent.TransportFactory`).
    """

    def __init__(self, params: ConnectParams, callbacks: TransportCallbacks) -> None:
        self.params = params
        self._callbacks = callbacks
        self._loop = asyncio.get_running_loop()
        self._v5 = params.protocol == "5"
        # MQTT 5 has clean start instead of clean session: given to connect() below.
        self._client = (
            _Client(CallbackAPIVersion.VERSION2, client_id=params.client_id, protocol=mqtt.MQTTv5)
            if self._v5
            else _Client(
                CallbackAPIVersion.VERSION2,
                client_id=params.client_id,
                clean_session=params.clean_session,
                protocol=mqtt.MQTTv311,
            )
        )
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        self._client.on_log = self._on_log
        self._client.on_pingresp = self._on_pingresp
        self._pings: list[asyncio.Future[None]] = []
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sock: ssl.SSLSocket | None = None
        self._housekeeping = _Housekeeping.of(self._loop)
        self._write_scheduled = False  # a write is due from call_soon
        self._awaiting_writable = False  # add_writer is on: the socket was full
        self._connected = False
        self._closing = False
        self._lost_reported = False
        self._last_error = ""
        self._socket_closed = asyncio.Event()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return (
            f"PahoTransport({self.params.endpoint}, client_id={self.params.client_id!r}, {state})"
        )

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._connected

    # -- connect ----------------------------------------------------------------------------

    async def connect(self) -> bool:
        """TCP, TLS and CONNACK within ``params.timeout_s``, never blocking the loop."""
        params = self.params
        stage = "tcp"
        try:
            async with asyncio.timeout(params.timeout_s):
                raw = await self._open_socket()
                stage = "tls"
                tls = await self._handshake(raw)
                stage = "mqtt"
                self._client._ready_socket = tls
                rc = (
                    self._client.connect(
                        params.endpoint.host,
                        params.endpoint.port,
                        keepalive=params.keepalive_s,
                        clean_start=params.clean_session,
                    )
                    if self._v5
                    else self._client.connect(
                        params.endpoint.host, params.endpoint.port, keepalive=params.keepalive_s
                    )
                )
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise ConnectError(  # noqa: TRY301 - translated like the others below
                        "closed", params.endpoint, mqtt.error_string(rc)
                    )
                session_present = await self._connack
        except TimeoutError as exc:
            self._abort()
            raise ConnectError("timeout", params.endpoint, f"no answer during {stage}") from exc
        except ConnectError:
            self._abort()
            raise
        except ssl.SSLCertVerificationError as exc:
            self._abort()
            raise ConnectError("tls", params.endpoint, exc.verify_message or str(exc)) from exc
        except ssl.SSLError as exc:
            self._abort()
            kind: ConnectErrorKind = "not_authorized" if _certificate_refused(exc) else "tls"
            raise ConnectError(kind, params.endpoint, exc.reason or str(exc)) from exc
        except ConnectionRefusedError as exc:
            self._abort()
            raise ConnectError("refused", params.endpoint) from exc
        except OSError as exc:
            self._abort()
            kind = "unreachable" if stage == "tcp" else "closed"
            raise ConnectError(kind, params.endpoint, exc.strerror or str(exc)) from exc
        except asyncio.CancelledError:
            self._abort()
            raise
        self._connected = True
        return session_present

    async def _open_socket(self) -> socket.socket:
        params = self.params
        sock = await open_tcp(params.address, params.endpoint.port, params.source_address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        """Step the TLS handshake on readiness callbacks: never blocks."""
        params = self.params
        tls = wrap_client(params.ssl_context, raw, params.server_name, params.alpn)
        self._sock = tls
        await step_handshake(self._loop, tls)
        return tls

    def _abort(self) -> None:
        """Tear a failed attempt down: the socket, paho's state, any waiter."""
        self._closing = True
        self._stop_io()
        with contextlib.suppress(Exception):
            self._client._sock_close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._fail_pending(TransportClosedError("connection attempt aborted"))
        if self._connack.done() and not self._connack.cancelled():
            self._connack.exception()  # mark retrieved

    # -- operations ---------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish; returns on PUBACK (QoS 1) or once written (QoS 0)."""
        if not self._connected:
            msg = f"not connected to {self.params.endpoint.region}"
            raise TransportClosedError(msg)
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            msg = f"publish to {topic} failed: {mqtt.error_string(info.rc)}"
            raise TransportClosedError(msg)
        if info.is_published():
            return
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[info.mid] = future
        code = await future
        if code is not None and code >= _FIRST_FAILURE:  # MQTT 5: a PUBACK that refuses
            raise PublishRefusedError(topic, code)

    async def ping(self) -> None:
        """Send a PINGREQ now (unless one is out already); return when the PINGRESP comes.

        Raises:
            TransportClosedError: the connection dropped first.
        """
        if not self._connected:
            msg = f"not connected to {self.params.endpoint.region}"
            raise TransportClosedError(msg)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pings.append(future)
        if self._client._ping_t == 0:  # paho allows one PINGREQ out at a time
            rc = self._client._send_pingreq()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pings.remove(future)
                msg = f"ping failed: {mqtt.error_string(rc)}"
                raise TransportClosedError(msg)
        await future

    def _on_pingresp(self) -> None:
        pings, self._pings = self._pings, []
        for future in pings:
            if not future.done():
                future.set_result(None)

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; returns the granted QoS."""
        if not self._connected:
            msg = f"not connected to {self.params.endpoint.region}"
            raise TransportClosedError(msg)
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            msg = f"subscribe to {topic_filter} failed: {mqtt.error_string(rc)}"
            raise TransportClosedError(msg)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = future
        codes: list[ReasonCode] = await future
        granted = codes[0] if codes else None
        if granted is None or granted.is_failure:
            msg = f"the broker refused the subscription to {topic_filter} ({granted})"
            raise DeviceAgentError(msg)
        return int(granted.value)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (best effort, not awaited)."""
        if self._connected:
            self._client.unsubscribe(topic_filter)

    async def disconnect(self) -> None:
        """DISCONNECT, then close; waits briefly for the broker to see it."""
        if self._closing:
            return
        self._closing = True
        if self._connected:
            self._client.disconnect()
            # paho closes the socket once DISCONNECT is written; give it a moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._socket_closed.wait()
        self._connected = False
        self._stop_io()
        with contextlib.suppress(Exception):
            self._client._sock_close()
        self._fail_pending(TransportClosedError("disconnected"))

    # -- paho callbacks ---------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        if self._connack.done():
            return
        if reason.is_failure:
            name = str(reason)
            kind: ConnectErrorKind = "unavailable"
            if name in _NOT_AUTHORIZED:
                kind = "not_authorized"
            elif reason.value in _THROTTLED:
                kind = "throttled"
            self._connack.set_exception(ConnectError(kind, self.params.endpoint, name))
        else:
            self._connack.set_result(bool(flags.session_present))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, flags, properties
        was_connected = self._connected
        self._connected = False
        detail = self._last_error or str(reason)
        if not self._connack.done():
            refused = "certificate" in detail.lower() or "alert" in detail.lower()
            kind: ConnectErrorKind = "not_authorized" if refused else "closed"
            self._connack.set_exception(ConnectError(kind, self.params.endpoint, detail))
        self._fail_pending(TransportClosedError(f"connection lost: {detail}"))
        if was_connected and not self._closing and not self._lost_reported:
            self._lost_reported = True
            self._loop.call_soon(self._callbacks.on_lost, _lost_kind(detail))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        del client, userdata
        deliver(
            self._callbacks,
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
        )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason.value)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason_codes)

    def _on_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        del client, userdata
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):
            self._last_error = text

    # -- socket plumbing: paho's I/O from the event loop -----------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        del userdata
        self._loop.add_reader(sock, self._read)
        self._housekeeping.add(client, self.params.keepalive_s)

    def _read(self) -> None:
        client = self._client
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes that select() does not announce.
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
            client.loop_read()

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        del client, userdata
        self._socket_closed.set()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        # paho calls this once per batch (until the matching unregister), not per packet.
        del client, userdata
        if self._write_scheduled or self._awaiting_writable:
            return
        if self._connected:
            self._write_scheduled = True
            self._loop.call_soon(self._write)
        else:
            # The CONNECT waits for writability: written at once, it races a refusing
            # server's alert (TLS 1.3 judges the client's certificate after the
            # handshake), and the reset that follows would hide why.
            self._awaiting_writable = True
            self._loop.add_writer(sock, self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        client = self._client
        client.loop_write()
        sock = client.socket()
        if client.want_write() and sock is not None and not self._awaiting_writable:
            # The socket took part of it: the rest when it can take more.
            self._awaiting_writable = True
            self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        del client, userdata
        if self._awaiting_writable:
            self._awaiting_writable = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    def _stop_io(self) -> None:
        self._housekeeping.discard(self._client)
        self._awaiting_writable = False
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)

    def _fail_pending(self, error: Exception) -> None:
        pings, self._pings = self._pings, []
        for ping in pings:
            if not ping.done():
                ping.set_exception(error)
                ping.exception()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: nobody may be waiting any more


def _certificate_refused(exc: ssl.SSLError) -> bool:
    text = f"{exc.reason} {exc}".lower()
    return any(
        word in text
        for word in (
            "certificate required",
            "bad certificate",
            "unknown ca",
            "certificate unknown",
            "certificate expired",
            "certificate revoked",
        )
    )


def _lost_kind(detail: str) -> str:
    text = detail.lower()
    if "keepalive" in text or "timeout" in text:
        return "timeout"
    if "certificate" in text or "alert" in text:
        return "not_authorized"
    return "closed"
