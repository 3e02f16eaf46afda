"""One device connection through the door: TLS ends here, the CONNECT is read, then a splice.

Theory of operation. A connection goes through these states, never back:

``HANDSHAKE`` -> ``CONNECT`` -> ``DECIDING`` -> ``SPLICED``, and from any of
them to ``HELD`` (silence) or ``CLOSED``.

* ``HANDSHAKE``: TLS is terminated here, on memory BIOs rather than asyncio's
  SSL transport: Python 3.11's asyncio allocates a 256 KiB buffer per TLS
  connection (1.3 GB at 5,000 devices); here a read takes 16 KiB at a time
  and nothing is kept between reads. The client certificate must chain to a
  trusted CA (``CERT_REQUIRED``); a failed handshake is reported with its
  reason (no certificate, unknown CA, expired, not TLS at all) and closed.
* ``CONNECT``: decrypted bytes are buffered until a whole CONNECT is there;
  anything else is malformed and closed. The door then decides.
* ``DECIDING``: reading pauses while the door opens the broker connection
  (or registers the certificate just in time).
* ``SPLICED``: bytes are copied both ways, the CONNECT first. Each direction
  goes through a :class:`~simulators.gateway._line.DelayLine`, which adds the
  ``degraded`` latency and holds bytes while the connection is frozen
  (``blackhole``). Flow control: a side whose write buffer fills pauses
  reading on the other side. A connection admitted by policies that do not
  allow everything has a :class:`~simulators.gateway._guard.SessionGuard` on
  the splice: what it denies never reaches the other side, its own answers
  (PUBACK 0x87, SUBACK 0x80, acks of undelivered messages) go back, and the
  door hears of each denial.
* ``HELD``: what a device sees of a blackhole. Nothing is ever sent; what
  arrives is read and thrown away, so a device that gives up (FIN) is
  noticed and its socket freed.

A frozen connection (``freeze``) reads nothing from either side and sends
nothing, with no RST or FIN; ``thaw`` resumes it as TCP retransmission would.
If the broker hung up meanwhile, the device's connection is closed at thaw.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Protocol

from simulators.gateway._guard import Passage
from simulators.gateway._line import DelayLine
from simulators.gateway._mqtt import MalformedPacketError, parse_connect
from simulators.gateway._tls import tls_failure_reason

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.gateway._guard import SessionGuard
    from simulators.gateway._mqtt import ConnectPacket
    from simulators.gateway._policy import Authorizer

__all__ = ["ConnectionState", "DeviceConnection", "Door", "UpstreamProtocol"]

_READ_SIZE = 16 * 1024
_DECIDING_MAX = 256 * 1024

# Why a transport is not read from; a transport reads when none applies.
_FROZEN = 1
_BACKPRESSURE = 2
_LINE_FULL = 4
_DECIDING = 8


class ConnectionState(enum.Enum):
    """Where a device connection is in its life (see the module's theory of operation)."""

    HANDSHAKE = "handshake"
    CONNECT = "connect"
    DECIDING = "deciding"
    SPLICED = "spliced"
    HELD = "held"
    CLOSED = "closed"


class Door(Protocol):
    """What a connection asks of its gateway."""

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS server context."""
        ...

    @property
    def connect_timeout_s(self) -> float:
        """How long the handshake and the CONNECT may take together."""
        ...

    def opened(self, connection: DeviceConnection) -> bool:
        """A TCP connection was accepted; False means hold it silent from the start."""
        ...

    def take_sni(self, tls: ssl.SSLObject, *, completed: bool = True) -> str | None:
        """The SNI the handshake of ``tls`` carried (forgotten once taken).

        ``completed`` is False for a handshake cut short (only its SNI is dropped).
        """
        ...

    def failed(self, connection: DeviceConnection, reason: str) -> None:
        """The handshake or the CONNECT failed; the connection is being closed."""
        ...

    def connect_received(self, connection: DeviceConnection, packet: ConnectPacket) -> None:
        """A whole CONNECT arrived: decide."""
        ...

    def denied(self, connection: DeviceConnection, passage: Passage) -> None:
        """The connection's guard denied something (and may want the connection closed)."""
        ...

    def closed(self, connection: DeviceConnection) -> None:
        """The connection is gone."""
        ...


class DeviceConnection(asyncio.Protocol):
    """A device's TCP connection to the door, and its splice to the broker once admitted."""

    __slots__ = ("_buffer", "_device_paused", "_door", "_incoming", "_loop",
                 "_outgoing", "_peer_closed", "_required_alpn", "_thaw_close", "_timer", "_tls",
                 "_to_broker", "_to_device", "_upstream_paused", "authorizer", "certificate_der",
                 "certificate_id", "client_id", "frozen", "guard", "protocol_level", "sni",
                 "state", "transport", "upstream")  # fmt: skip

    def __init__(
        self, door: Door, loop: asyncio.AbstractEventLoop, *, required_alpn: str | None = None
    ) -> None:
        self._door = door
        self._loop = loop
        self._required_alpn = required_alpn  # the 443-style listener: MQTT only by ALPN
        self.state = ConnectionState.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._tls: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._to_broker: DelayLine | None = None
        self._to_device: DelayLine | None = None
        self._device_paused = 0
        self._upstream_paused = 0
        self._peer_closed = False
        self._thaw_close = False
        self.certificate_der = b""
        self.certificate_id: str | None = None
        self.client_id: str | None = None
        self.sni: str | None = None
        self.protocol_level = 0
        self.frozen = False
        self.authorizer: Authorizer | None = None  # the bound policies, when admitted by them
        self.guard: SessionGuard | None = None

    def __repr__(self) -> str:
        return (
            f"DeviceConnection({self.state.value}, client_id={self.client_id!r}, "
            f"certificate={(self.certificate_id or '')[:12]}, frozen={self.frozen})"
        )

    # -- asyncio callbacks: the device's side -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._door.opened(self):
            self.state = ConnectionState.HELD  # accepted by the kernel, never answered
            return
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = self._door.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timer = self._loop.call_later(self._door.connect_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in (ConnectionState.HELD, ConnectionState.CLOSED) or self._incoming is None:
            return
        self._incoming.write(data)
        if state is ConnectionState.HANDSHAKE:
            # The handshake may end in the same read as the device's close_notify (a TLS
            # probe that only handshakes): the close is seen below, not after a timeout.
            self._handshake()
        else:
            plain = self._decrypt()
            if plain:
                self._plaintext(plain)
        if self._peer_closed and self.state is not ConnectionState.CLOSED:
            self.close()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._finish()
        if self.upstream is not None:
            self.upstream.close()
        self._door.closed(self)

    def pause_writing(self) -> None:
        self._pause_upstream(_BACKPRESSURE)

    def resume_writing(self) -> None:
        self._resume_upstream(_BACKPRESSURE)

    # -- the broker's side (through UpstreamProtocol) -----------------------------------------

    def from_broker(self, data: bytes) -> None:
        """Bytes the broker sent, for the device."""
        if self._to_device is None or self.state is not ConnectionState.SPLICED:
            return
        if self.guard is None:
            self._to_device.push(data)
        else:
            self._through_guard(self.guard.from_broker, data, self._to_device, self._to_broker)

    def broker_closed(self) -> None:
        """The broker hung up (refused the CONNECT, took the session over, timed out...)."""
        self.upstream = None
        if self.state is ConnectionState.CLOSED:
            return
        if self.frozen:
            self._thaw_close = True  # a blackhole delivers no FIN either
            return
        self.close()

    # -- what the door does with it -------------------------------------------------------

    def splice(self, upstream: asyncio.Transport) -> None:
        """Connect to the broker's side: the CONNECT (and what followed it) goes first."""
        self.upstream = upstream
        self.state = ConnectionState.SPLICED
        self._to_broker = DelayLine(
            self._loop,
            upstream.write,
            lambda: self._pause_device(_LINE_FULL),
            lambda: self._resume_device(_LINE_FULL),
        )
        self._to_device = DelayLine(
            self._loop,
            self._write_device,
            lambda: self._pause_upstream(_LINE_FULL),
            lambda: self._resume_upstream(_LINE_FULL),
        )
        pending, self._buffer = bytes(self._buffer), bytearray()
        self._from_device(pending)
        self._resume_device(_DECIDING)

    def refuse(self, answer: bytes | None) -> None:
        """Send ``answer`` (a CONNACK) if any, then close."""
        if answer and self._tls is not None and self.state is not ConnectionState.CLOSED:
            self._write_device(answer)
        self.close()

    def hold(self) -> None:
        """Never answer again: read and discard until the device gives up."""
        self._cancel_timer()
        self.state = ConnectionState.HELD
        self._buffer = bytearray()
        self._tls = self._incoming = self._outgoing = None
        self._device_paused = 0
        if self.transport is not None:
            self.transport.resume_reading()

    def freeze(self) -> None:
        """Silence both directions without closing anything (a blackhole)."""
        if self.frozen or self.state is ConnectionState.CLOSED:
            return
        self.frozen = True
        self._pause_device(_FROZEN)
        self._pause_upstream(_FROZEN)
        for line in (self._to_broker, self._to_device):
            if line is not None:
                line.set_open(False)

    def thaw(self) -> None:
        """Resume a frozen connection (or close it if the broker left meanwhile)."""
        if not self.frozen:
            return
        self.frozen = False
        if self._thaw_close:
            self.close()
            return
        for line in (self._to_broker, self._to_device):
            if line is not None:
                line.set_open(True)
        self._resume_device(_FROZEN)
        self._resume_upstream(_FROZEN)

    def set_latency(self, latency_s: float) -> None:
        """Delay every chunk forwarded from now on by ``latency_s`` (``degraded``)."""
        for line in (self._to_broker, self._to_device):
            if line is not None:
                line.latency_s = latency_s

    def cut(self) -> None:
        """Close on the region's own account (revocation, takeover); silently while frozen."""
        if self.frozen:
            self._thaw_close = True  # the FIN waits for the blackhole to end, as TCP's would
            if self.upstream is not None:
                self.upstream.close()
            return
        self.close()

    def close(self) -> None:
        """Close both sides gracefully: close_notify and FIN to the device, FIN to the broker."""
        if self.state is ConnectionState.CLOSED:
            return
        if not self.frozen:
            for line in (self._to_broker, self._to_device):
                if line is not None:
                    line.drain_now()
        if self._tls is not None and self.state is not ConnectionState.HANDSHAKE:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._tls.unwrap()
            self._send_tls()
        self._finish()
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0): what a device sees of a region that is down."""
        self._finish()
        for transport in (self.transport, self.upstream):
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    # -- internals --------------------------------------------------------------------------

    def _handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send_tls()
            return
        except ssl.SSLError as exc:
            self._send_tls()  # the alert tells the device why
            self._fail(tls_failure_reason(exc))
            return
        self._send_tls()
        der = self._tls.getpeercert(binary_form=True)
        self.sni = self._door.take_sni(self._tls)
        if not der:
            self._fail("tls_no_certificate")
            return
        if self._required_alpn and self._tls.selected_alpn_protocol() != self._required_alpn:
            self._fail("tls_no_alpn")  # AWS's 443 without x-amzn-mqtt-ca is HTTPS, not MQTT
            return
        self.certificate_der = der
        self.certificate_id = hashlib.sha256(der).hexdigest()
        self.state = ConnectionState.CONNECT
        plain = self._decrypt()
        if plain:
            self._plaintext(plain)

    def _plaintext(self, plain: bytes) -> None:
        state = self.state
        if state is ConnectionState.SPLICED:
            self._from_device(plain)
        elif state is ConnectionState.CONNECT:
            self._buffer += plain
            try:
                packet = parse_connect(self._buffer)
            except MalformedPacketError:
                self._fail("malformed")
                return
            if packet is None:
                return
            self._cancel_timer()
            self.state = ConnectionState.DECIDING
            self.client_id = packet.client_id
            self.protocol_level = packet.protocol_level
            self._pause_device(_DECIDING)
            self._door.connect_received(self, packet)
        elif state is ConnectionState.DECIDING:
            self._buffer += plain
            if len(self._buffer) > _DECIDING_MAX:
                self._fail("malformed")

    def _from_device(self, plain: bytes) -> None:
        assert self._to_broker is not None
        if self.guard is None:
            self._to_broker.push(plain)
        else:
            self._through_guard(self.guard.from_device, plain, self._to_broker, self._to_device)

    def _through_guard(
        self,
        check: Callable[[bytes], Passage],
        data: bytes,
        ahead: DelayLine,
        back: DelayLine | None,
    ) -> None:
        """Forward what the guard lets pass, send its own answers back, report its denials."""
        passage = _guarded(check, data)
        if passage.forward:
            ahead.push(passage.forward)
        if passage.answer and back is not None:
            back.push(passage.answer)
        if passage.denied or passage.close is not None:
            self._door.denied(self, passage)

    def _decrypt(self) -> bytes:
        assert self._tls is not None
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_closed = True
                break
            except ssl.SSLError:
                self._peer_closed = True  # a broken record: nothing more can be read
                break
            if not chunk:
                self._peer_closed = True
                break
            chunks.append(chunk)
        self._send_tls()  # reading can produce TLS output (key updates, alerts)
        return b"".join(chunks)

    def _write_device(self, data: bytes) -> None:
        if self._tls is None or self.transport is None or self.transport.is_closing():
            return
        try:
            self._tls.write(data)
        except ssl.SSLError:
            return
        self._send_tls()

    def _send_tls(self) -> None:
        if self._outgoing is None or self.transport is None:
            return
        data = self._outgoing.read()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, reason: str) -> None:
        self._door.failed(self, reason)
        self._finish()
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self.state in (ConnectionState.HANDSHAKE, ConnectionState.CONNECT):
            self._fail("connect_timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        if self._tls is not None and self.state is ConnectionState.HANDSHAKE:
            self._door.take_sni(
                self._tls, completed=False
            )  # a handshake cut short leaves its SNI behind
        self.state = ConnectionState.CLOSED
        self._cancel_timer()
        for line in (self._to_broker, self._to_device):
            if line is not None:
                line.clear()
        self._buffer = bytearray()

    def _pause_device(self, reason: int) -> None:
        if not self._device_paused and self.transport is not None:
            self.transport.pause_reading()
        self._device_paused |= reason

    def _resume_device(self, reason: int) -> None:
        was = self._device_paused
        self._device_paused &= ~reason
        if was and not self._device_paused and self.transport is not None:
            self.transport.resume_reading()

    def _pause_upstream(self, reason: int) -> None:
        if not self._upstream_paused and self.upstream is not None:
            self.upstream.pause_reading()
        self._upstream_paused |= reason

    def _resume_upstream(self, reason: int) -> None:
        was = self._upstream_paused
        self._upstream_paused &= ~reason
        if was and not self._upstream_paused and self.upstream is not None:
            self.upstream.resume_reading()


def _guarded(check: Callable[[bytes], Passage], data: bytes) -> Passage:
    """The guard's passage; a guard that fails closes the connection instead of the loop."""
    try:
        return check(data)
    except Exception:  # noqa: BLE001 - no input may take the door down: counted, then closed
        return Passage(close="guard_failed")


class UpstreamProtocol(asyncio.Protocol):
    """The plain TCP connection from the door to the broker, on behalf of one device."""

    __slots__ = ("_device",)

    def __init__(self, device: DeviceConnection) -> None:
        self._device = device

    def data_received(self, data: bytes) -> None:
        self._device.from_broker(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._device.broker_closed()

    def pause_writing(self) -> None:
        self._device._pause_device(_BACKPRESSURE)

    def resume_writing(self) -> None:
        self._device._resume_device(_BACKPRESSURE)
