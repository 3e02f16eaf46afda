"""What an admitted device may do: the door's checks of PUBLISH, SUBSCRIBE and delivery. Pure.

Theory of operation. Once a device is admitted by its policies, a
:class:`SessionGuard` sits on both directions of its splice and frames the
MQTT packets (fixed header, remaining length; a packet cut over several reads
waits for its rest). It goes down this list for each whole packet and stops
at the first rule that applies, as AWS IoT does:

1. A packet that cannot be framed or read (a remaining length of more than
   four bytes, a packet larger than :data:`MAX_PACKET_SIZE`, a topic that is
   not UTF-8, a field cut short): the connection is closed (``malformed``).
2. A PUBLISH from the device whose topic the policies do not allow
   ``iot:Publish`` on (``topic/<topic>``): denied. MQTT 3.1.1 has no way to
   say so: the connection is closed. MQTT 5: a QoS 1 publish is answered
   PUBACK 0x87 (not authorized), a QoS 2 one PUBREC 0x87, a QoS 0 one
   dropped; the connection stays. A topic alias (MQTT 5) is resolved first.
3. A SUBSCRIBE from the device: each filter is checked for ``iot:Subscribe``
   on ``topicfilter/<filter>`` (the filter as sent: ``+`` and ``#`` are
   literal). All allowed: it passes. None: the door answers the SUBACK itself,
   0x80 for each, and the broker never sees it. Some: the broker gets the
   allowed filters only, and its SUBACK is widened back to the device's
   filters with 0x80 where one was denied.
4. A PUBLISH from the broker whose topic the policies do not allow
   ``iot:Receive`` on: not delivered. The door acknowledges it to the broker
   itself (PUBACK, or PUBREC for QoS 2), so that nothing waits for it.
5. Everything else passes unchanged, in order.

A direction whose every packet the policies allow (``iot:Publish`` and
``iot:Subscribe`` on everything from the device, ``iot:Receive`` on every
topic) is not framed at all: :meth:`SessionGuard.of` says which, and returns
None when neither needs a look. A denial is reported by its counter key
(``policy_publish_denied``, ``policy_subscribe_denied``,
``policy_receive_denied``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simulators.gateway._mqtt import MQTT_5
from simulators.gateway._policy import PUBLISH, RECEIVE, SUBSCRIBE

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.gateway._policy import Authorizer

    _Handler = Callable[[bytes, "_Direction", "Passage", list[bytes]], None]

__all__ = ["MAX_PACKET_SIZE", "Passage", "SessionGuard"]

MAX_PACKET_SIZE = 256 * 1024
"""The largest packet the guard frames (AWS IoT's messages: 128 KB)."""

PUBLISH_DENIED = "policy_publish_denied"
SUBSCRIBE_DENIED = "policy_subscribe_denied"
RECEIVE_DENIED = "policy_receive_denied"

_PUBLISH = 3
_SUBSCRIBE = 8
_SUBACK = 9
_NOT_AUTHORIZED = 0x87
_SUBACK_FAILURE = 0x80
_TOPIC_ALIAS = 0x23
_MAX_VARINT_BYTES = 4

# MQTT 5 property identifiers by the size of their value (-1: variable byte
# integer, -2: two-byte length then data, -3: a pair of those).
_PROPERTY_SIZES: dict[int, int] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    0x0B: -1,
    **dict.fromkeys((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F), -2),
    0x26: -3,
}


class _MalformedError(Exception):
    """A packet the guard cannot read."""


@dataclass(slots=True)
class Passage:
    """What to do with bytes that arrived from one side.

    Attributes:
        forward: for the other side.
        answer: back to the side they came from (the door's own acks).
        denied: a counter key per denial.
        close: close the connection, for this reason (after ``forward``); None to keep it.
    """

    forward: bytes = b""
    answer: bytes = b""
    denied: list[str] = field(default_factory=list)
    close: str | None = None


@dataclass(slots=True)
class _Direction:
    buffer: bytearray = field(default_factory=bytearray)
    aliases: dict[int, str] = field(default_factory=dict)


class SessionGuard:
    """The checks of one admitted connection (see the module's rules).

    Args:
        authorizer: the connection's bound policies.
        protocol_level: 4 (MQTT 3.1.1) or 5.
        arn_prefix: ``arn:aws:iot:REGION:ACCOUNT:`` of the region.
        from_device: frame what the device sends.
        from_broker: frame what the broker sends.
    """

    __slots__ = ("_down", "_pending", "_up", "arn_prefix", "authorizer",
                 "checks_broker", "checks_device", "protocol_level")  # fmt: skip

    def __init__(
        self,
        authorizer: Authorizer,
        *,
        protocol_level: int,
        arn_prefix: str,
        from_device: bool = True,
        from_broker: bool = True,
    ) -> None:
        self.authorizer = authorizer
        self.protocol_level = protocol_level
        self.arn_prefix = arn_prefix
        self.checks_device = from_device
        self.checks_broker = from_broker
        self._up = _Direction()
        self._down = _Direction()
        self._pending: dict[int, tuple[bool, ...]] = {}  # SUBSCRIBE id -> which filters passed

    def __repr__(self) -> str:
        return (
            f"SessionGuard(level={self.protocol_level}, device={self.checks_device}, "
            f"broker={self.checks_broker}, pending_subacks={len(self._pending)})"
        )

    @staticmethod
    def needs(authorizer: Authorizer, arn_prefix: str) -> tuple[bool, bool]:
        """Which directions ``authorizer`` needs framed: (from the device, from the broker)."""
        topics = f"{arn_prefix}topic/"
        subscribe_all = authorizer.allows_every(SUBSCRIBE, f"{arn_prefix}topicfilter/")
        device = not (authorizer.allows_every(PUBLISH, topics) and subscribe_all)
        # A partly denied SUBSCRIBE's SUBACK comes back from the broker: frame that side too.
        broker = not (authorizer.allows_every(RECEIVE, topics) and subscribe_all)
        return device, broker

    @classmethod
    def of(
        cls, authorizer: Authorizer, *, protocol_level: int, arn_prefix: str
    ) -> SessionGuard | None:
        """The guard a connection needs; None if its policies allow everything after CONNECT."""
        device, broker = cls.needs(authorizer, arn_prefix)
        if not (device or broker):
            return None
        return cls(
            authorizer,
            protocol_level=protocol_level,
            arn_prefix=arn_prefix,
            from_device=device,
            from_broker=broker,
        )

    def from_device(self, data: bytes) -> Passage:
        """Bytes the device sent."""
        if not self.checks_device:
            return Passage(forward=data)
        return self._frame(self._up, data, self._device_packet)

    def from_broker(self, data: bytes) -> Passage:
        """Bytes the broker sent, for the device."""
        if not self.checks_broker:
            return Passage(forward=data)
        return self._frame(self._down, data, self._broker_packet)

    # -- framing ----------------------------------------------------------------------------

    def _frame(self, side: _Direction, data: bytes, handle: _Handler) -> Passage:
        buffer = side.buffer
        buffer += data
        passage = Passage()
        out: list[bytes] = []
        start = 0
        try:
            while True:
                size = _packet_size(buffer, start)
                if size is None:
                    break
                packet = bytes(buffer[start : start + size])
                start += size
                handle(packet, side, passage, out)
                if passage.close is not None:
                    break
        except _MalformedError:
            passage.close = "malformed"
        del buffer[:start]
        passage.forward = b"".join(out)
        return passage

    # -- the device's packets ----------------------------------------------------------------

    def _device_packet(
        self, packet: bytes, side: _Direction, passage: Passage, out: list[bytes]
    ) -> None:
        kind = packet[0] >> 4
        if kind == _PUBLISH:
            topic, packet_id, qos = self._publish(packet, side)
            if self.authorizer.check(PUBLISH, f"{self.arn_prefix}topic/{topic}").allowed:
                out.append(packet)
                return
            passage.denied.append(PUBLISH_DENIED)
            if self.protocol_level != MQTT_5:
                passage.close = PUBLISH_DENIED  # AWS disconnects an MQTT 3.1.1 client
            elif qos:
                ack = 0x40 if qos == 1 else 0x50  # PUBACK or PUBREC
                passage.answer += bytes((ack, 3, packet_id >> 8, packet_id & 0xFF, _NOT_AUTHORIZED))
            return
        if kind == _SUBSCRIBE:
            self._subscribe(packet, passage, out)
            return
        out.append(packet)

    def _subscribe(self, packet: bytes, passage: Passage, out: list[bytes]) -> None:
        reader = _Reader(packet)
        packet_id = reader.uint16()
        properties = reader.properties_raw() if self.protocol_level == MQTT_5 else b""
        entries: list[tuple[bytes, bool]] = []
        while not reader.done():
            begin = reader.offset
            topic_filter = reader.text()
            reader.take(1)  # subscription options
            resource = f"{self.arn_prefix}topicfilter/{topic_filter}"
            allowed = self.authorizer.check(SUBSCRIBE, resource).allowed
            entries.append((packet[begin : reader.offset], allowed))
        if not entries:
            raise _MalformedError
        passed = tuple(allowed for _, allowed in entries)
        if all(passed):
            out.append(packet)
            return
        passage.denied.extend(SUBSCRIBE_DENIED for allowed in passed if not allowed)
        if not any(passed):
            props = b"\x00" if self.protocol_level == MQTT_5 else b""
            codes = bytes(_SUBACK_FAILURE for _ in passed)
            passage.answer += _packet(0x90, packet_id.to_bytes(2, "big") + props + codes)
            return
        self._pending[packet_id] = passed
        body = packet_id.to_bytes(2, "big") + properties
        body += b"".join(entry for entry, allowed in entries if allowed)
        out.append(_packet(0x82, body))

    # -- the broker's packets ----------------------------------------------------------------

    def _broker_packet(
        self, packet: bytes, side: _Direction, passage: Passage, out: list[bytes]
    ) -> None:
        kind = packet[0] >> 4
        if kind == _PUBLISH:
            topic, packet_id, qos = self._publish(packet, side)
            if self.authorizer.check(RECEIVE, f"{self.arn_prefix}topic/{topic}").allowed:
                out.append(packet)
                return
            passage.denied.append(RECEIVE_DENIED)
            if qos:
                ack = 0x40 if qos == 1 else 0x50
                passage.answer += bytes((ack, 2, packet_id >> 8, packet_id & 0xFF))
            return
        if kind == _SUBACK and self._pending:
            reader = _Reader(packet)
            packet_id = reader.uint16()
            passed = self._pending.pop(packet_id, None)
            if passed is not None:
                properties = reader.properties_raw() if self.protocol_level == MQTT_5 else b""
                granted = iter(reader.rest())
                codes = bytes(next(granted, _SUBACK_FAILURE) if ok else _SUBACK_FAILURE
                              for ok in passed)  # fmt: skip
                out.append(_packet(0x90, packet_id.to_bytes(2, "big") + properties + codes))
                return
        out.append(packet)

    # -- reading ------------------------------------------------------------------------------

    def _publish(self, packet: bytes, side: _Direction) -> tuple[str, int, int]:
        """(topic, packet id or 0, QoS) of a PUBLISH, its topic alias resolved."""
        qos = (packet[0] >> 1) & 0x03
        if qos == 3:  # the one QoS value MQTT reserves
            raise _MalformedError
        reader = _Reader(packet)
        topic = reader.text()
        packet_id = reader.uint16() if qos else 0
        if self.protocol_level == MQTT_5:
            alias = reader.topic_alias()
            if alias is not None:
                if topic:
                    side.aliases[alias] = topic
                else:
                    topic = side.aliases.get(alias, "")
        if not topic:
            raise _MalformedError
        return topic, packet_id, qos


def _packet_size(buffer: bytearray, start: int) -> int | None:
    """The size of the packet at ``start`` (fixed header included); None while it is incomplete."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        position = start + 1 + index
        if position >= len(buffer):
            return None
        byte = buffer[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            size = 2 + index + value
            if size > MAX_PACKET_SIZE:
                raise _MalformedError
            return size if start + size <= len(buffer) else None
    raise _MalformedError


def _packet(first: int, body: bytes) -> bytes:
    length = len(body)
    header = bytearray((first,))
    while True:
        byte = length & 0x7F
        length >>= 7
        header.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(header) + body


class _Reader:
    """Reads the variable header and payload of one whole packet; running short is malformed."""

    __slots__ = ("data", "end", "offset")

    def __init__(self, packet: bytes) -> None:
        self.data = packet
        self.end = len(packet)
        offset = 1
        while packet[offset] & 0x80:
            offset += 1
        self.offset = offset + 1

    def done(self) -> bool:
        return self.offset >= self.end

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > self.end:
            raise _MalformedError
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def uint16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def text(self) -> str:
        try:
            return self.take(self.uint16()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _MalformedError from exc

    def varint(self) -> int:
        value = 0
        for index in range(_MAX_VARINT_BYTES):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return value
        raise _MalformedError

    def rest(self) -> bytes:
        return self.take(self.end - self.offset)

    def properties_raw(self) -> bytes:
        """The MQTT 5 property block, length included, as it came."""
        begin = self.offset
        self.take(self.varint())
        return self.data[begin : self.offset]

    def topic_alias(self) -> int | None:
        """Read the MQTT 5 properties of a PUBLISH; its topic alias, if it has one."""
        block = _Reader.__new__(_Reader)
        length = self.varint()
        block.data, block.offset, block.end = self.data, self.offset, self.offset + length
        if block.end > self.end:
            raise _MalformedError
        self.offset = block.end
        alias = None
        while not block.done():
            identifier = block.varint()
            size = _PROPERTY_SIZES.get(identifier)
            if size is None:
                raise _MalformedError
            if identifier == _TOPIC_ALIAS:
                alias = block.uint16()
            elif size > 0:
                block.take(size)
            elif size == -1:
                block.varint()
            else:
                for _ in range(-size - 1):
                    block.take(block.uint16())
        return alias
