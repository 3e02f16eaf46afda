"""Just enough MQTT for the door: parse a CONNECT, encode a CONNACK. No I/O.

The gateway reads the first packet a device sends after the TLS handshake. It
must be a CONNECT (MQTT 3.1.1 or 5; an MQTT 3.1 CONNECT is recognised so that
it can be refused with the right code); the gateway needs its protocol level
and client ID, and forwards its bytes to the broker unchanged. Anything else
is malformed and the connection is closed, as AWS IoT does.

:func:`parse_connect` takes the bytes received so far and returns None while
the packet is incomplete, so a CONNECT split over several TLS records is
fine. A packet larger than ``max_size`` is refused before it is buffered whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from simulators._errors import GatewayError

__all__ = [
    "MAX_CONNECT_SIZE",
    "ConnackOutcome",
    "ConnectPacket",
    "MalformedPacketError",
    "connack",
    "parse_connect",
]

MAX_CONNECT_SIZE = 128 * 1024
"""AWS IoT's largest CONNECT (and publish): 128 KB."""

MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5

_CONNECT = 0x10
_PROTOCOL_NAMES = {b"MQTT": (MQTT_3_1_1, MQTT_5), b"MQIsdp": (MQTT_3_1,)}
_MAX_VARINT_BYTES = 4


class MalformedPacketError(GatewayError):
    """The bytes a device sent are not an MQTT CONNECT."""


@dataclass(frozen=True, slots=True)
class ConnectPacket:
    """The parts of a CONNECT the door decides on.

    Attributes:
        protocol_level: 3 (MQTT 3.1), 4 (3.1.1) or 5.
        client_id: the client identifier (may be empty).
        clean_start: the clean session / clean start flag.
        keepalive_s: the keep-alive the client asked for.
        size: the whole packet's length in bytes (fixed header included).
    """

    protocol_level: int
    client_id: str
    clean_start: bool
    keepalive_s: int
    size: int

    @property
    def supported(self) -> bool:
        """Whether AWS IoT speaks this level (3.1.1 and 5; not 3.1)."""
        return self.protocol_level in (MQTT_3_1_1, MQTT_5)


class ConnackOutcome(enum.Enum):
    """Why a CONNECT is answered with a refusing CONNACK."""

    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    NOT_AUTHORIZED = "not_authorized"
    SERVER_UNAVAILABLE = "server_unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"


# MQTT 3.1.1 return codes, MQTT 5 reason codes. 3.1.1 has no quota code: "server unavailable".
_CODES: dict[ConnackOutcome, tuple[int, int]] = {
    ConnackOutcome.UNSUPPORTED_PROTOCOL: (0x01, 0x84),
    ConnackOutcome.NOT_AUTHORIZED: (0x05, 0x87),
    ConnackOutcome.SERVER_UNAVAILABLE: (0x03, 0x88),
    ConnackOutcome.QUOTA_EXCEEDED: (0x03, 0x97),
}


def connack(protocol_level: int, outcome: ConnackOutcome) -> bytes:
    """A refusing CONNACK for a client of ``protocol_level`` (session present 0)."""
    v3_code, v5_code = _CODES[outcome]
    if protocol_level == MQTT_5:
        return bytes((0x20, 0x03, 0x00, v5_code, 0x00))  # no properties
    return bytes((0x20, 0x02, 0x00, v3_code))


def parse_connect(
    data: bytes | bytearray, *, max_size: int = MAX_CONNECT_SIZE
) -> ConnectPacket | None:
    """The CONNECT at the start of ``data``, or None if more bytes are needed.

    Raises:
        MalformedPacketError: the bytes are not an MQTT CONNECT, or it is larger
            than ``max_size``.
    """
    if not data:
        return None
    if data[0] != _CONNECT:
        msg = f"the first packet is not a CONNECT (first byte 0x{data[0]:02x})"
        raise MalformedPacketError(msg)
    found = _varint(data, 1)
    if found is None:
        return None
    remaining, offset = found
    size = offset + remaining
    if size > max_size:
        msg = f"CONNECT of {size} bytes is larger than {max_size}"
        raise MalformedPacketError(msg)
    if len(data) < size:
        return None
    body = _Reader(bytes(data[offset:size]))
    name = body.binary()
    level = body.byte()
    levels = _PROTOCOL_NAMES.get(name)
    if levels is None:
        msg = f"unknown protocol name {name[:16]!r}"
        raise MalformedPacketError(msg)
    if level not in levels:
        if name == b"MQTT":
            # A well-formed CONNECT of a level we do not speak: answered, not dropped.
            return ConnectPacket(level, "", clean_start=False, keepalive_s=0, size=size)
        msg = f"protocol name {name!r} with level {level}"
        raise MalformedPacketError(msg)
    flags = body.byte()
    if flags & 0x01:
        msg = "CONNECT flags: the reserved bit is set"
        raise MalformedPacketError(msg)
    keepalive = body.uint16()
    if level == MQTT_5:
        body.skip(body.varint())  # properties
    try:
        client_id = body.binary().decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = "the client ID is not UTF-8"
        raise MalformedPacketError(msg) from exc
    return ConnectPacket(level, client_id, bool(flags & 0x02), keepalive, size)


def _varint(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(value, offset after it) of the variable byte integer at ``start``; None if cut short."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        position = start + index
        if position >= len(data):
            return None
        byte = data[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position + 1
    msg = "the remaining length takes more than four bytes"
    raise MalformedPacketError(msg)


class _Reader:
    """Reads the fields of a complete packet body; running short is malformed."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def _take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            msg = "CONNECT ends inside a field"
            raise MalformedPacketError(msg)
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def byte(self) -> int:
        return self._take(1)[0]

    def uint16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def binary(self) -> bytes:
        return self._take(self.uint16())

    def varint(self) -> int:
        found = _varint(self._data, self._offset)
        if found is None:
            msg = "CONNECT ends inside a variable byte integer"
            raise MalformedPacketError(msg)
        value, self._offset = found
        return value

    def skip(self, count: int) -> None:
        self._take(count)
