"""A minimal MQTT 3.1.1 client over mTLS for one round trip: connect, subscribe, publish, receive.

What ``e2e`` needs to prove that a device identity works in a region, and no
more: QoS 0, one subscription, bounded by one deadline. It connects to an
address (the local door's loopback port, or the endpoint itself on AWS) and
sends the endpoint's name as SNI (AWS IoT drops a multi-account-registered
certificate's connection without it); the server certificate is always
verified against the given CA (or the system's trust store).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replicator._errors import ReplicatorError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MqttEndpoint", "MqttError", "round_trip"]

_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttError(ReplicatorError):
    """The round trip failed: refused, closed, timed out, or TLS failed."""

    exit_code = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttEndpoint:
    """Where a region's devices connect: the address, the name to send as SNI, the trust anchor."""

    host: str
    port: int
    server_name: str
    ca_path: Path | None = None


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([kind]) + bytes(encoded) + body


class _Reader:
    def __init__(self, sock: ssl.SSLSocket, deadline: float) -> None:
        self.sock, self.deadline, self.buffer = sock, deadline, b""

    def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise MqttError("timed out waiting for the broker")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise MqttError("the connection was closed by the region")
            self.buffer += chunk

    def packet(self) -> tuple[int, bytes]:
        self._fill(2)
        length, multiplier, index = 0, 1, 1
        while True:
            self._fill(index + 1)
            byte = self.buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        self._fill(index + length)
        kind, body = self.buffer[0], self.buffer[index : index + length]
        self.buffer = self.buffer[index + length :]
        return kind, body


def _exchange(
    sock: ssl.SSLSocket, reader: _Reader, client_id: str, topic: str, payload: bytes
) -> None:
    sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02, 0, 60]) + _string(client_id)))
    kind, body = reader.packet()
    if kind != 0x20 or len(body) < 2 or body[1] != 0:
        code = body[1] if len(body) > 1 else -1
        raise MqttError(f"connect: CONNECT refused: {_CONNACK_CODES.get(code, code)}")
    sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + _string(topic) + b"\x00"))
    kind, body = reader.packet()
    if kind != 0x90 or body[-1:] == b"\x80":
        raise MqttError(f"subscribe: SUBSCRIBE to {topic} refused")
    sock.sendall(_packet(0x30, _string(topic) + payload))
    while True:
        kind, body = reader.packet()
        if kind & 0xF0 == 0x30:
            size = int.from_bytes(body[:2], "big")
            offset = 2 + size + (2 if kind & 0x06 else 0)
            if body[2 : 2 + size].decode(errors="replace") == topic and body[offset:] == payload:
                break
    sock.sendall(b"\xe0\x00")


def round_trip(
    endpoint: MqttEndpoint,
    *,
    client_id: str,
    cert_path: Path,
    key_path: Path,
    topic: str,
    payload: bytes,
    timeout_s: float,
) -> None:
    """Connect as ``client_id``, subscribe to ``topic``, publish ``payload``, receive it back.

    Raises:
        MqttError: any step failed (the message says which and why).
    """
    context = ssl.create_default_context(cafile=str(endpoint.ca_path) if endpoint.ca_path else None)
    context.load_cert_chain(str(cert_path), str(key_path))
    deadline = time.monotonic() + timeout_s
    try:
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
        with context.wrap_socket(raw, server_hostname=endpoint.server_name) as sock:
            _exchange(sock, _Reader(sock, deadline), client_id, topic, payload)
    except ssl.SSLError as exc:
        raise MqttError(f"TLS: {exc.reason or exc}") from exc
    except OSError as exc:
        raise MqttError(f"{exc.strerror or exc}") from exc
