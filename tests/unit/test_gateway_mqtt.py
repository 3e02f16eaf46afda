"""The door's MQTT: CONNECT parsing (3.1.1, 5, 3.1; split, malformed, too large) and CONNACKs."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.gateway import (
    ConnackOutcome,
    ConnectPacket,
    MalformedPacketError,
    connack,
    parse_connect,
)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def connect_bytes(
    client_id: bytes = b"dev-1",
    *,
    level: int = 4,
    name: bytes = b"MQTT",
    flags: int = 0x02,
    keepalive: int = 30,
    properties: bytes = b"",
    tail: bytes = b"",
    first: int = 0x10,
) -> bytes:
    variable = _string(name) + bytes((level, flags)) + keepalive.to_bytes(2, "big")
    if level == 5:
        variable += _varint(len(properties)) + properties
    body = variable + _string(client_id) + tail
    return bytes((first,)) + _varint(len(body)) + body


def test_mqtt_3_1_1() -> None:
    data = connect_bytes(b"pump-7", keepalive=1200)
    assert parse_connect(data) == ConnectPacket(4, "pump-7", True, 1200, len(data))


def test_mqtt_5_with_properties_will_and_credentials() -> None:
    properties = b"\x11\x00\x00\x0e\x10" + b"\x21\x00\x14"  # session expiry, receive maximum
    tail = _string(b"will/topic") + _string(b"bye") + _string(b"user?SDK=x") + _string(b"pw")
    data = connect_bytes(b"pump-8", level=5, flags=0xC6, properties=properties, tail=tail)
    packet = parse_connect(data)
    assert packet == ConnectPacket(5, "pump-8", True, 30, len(data))
    assert packet.supported


def test_mqtt_3_1_is_recognised_but_not_supported() -> None:
    packet = parse_connect(connect_bytes(b"old", level=3, name=b"MQIsdp"))
    assert packet is not None
    assert packet.protocol_level == 3
    assert not packet.supported


def test_an_unknown_level_of_mqtt_is_answered_not_dropped() -> None:
    packet = parse_connect(connect_bytes(level=6))
    assert packet is not None
    assert not packet.supported


def test_an_empty_client_id_is_allowed_by_the_parser() -> None:
    packet = parse_connect(connect_bytes(b""))
    assert packet is not None
    assert packet.client_id == ""


def test_bytes_after_the_connect_are_not_part_of_it() -> None:
    data = connect_bytes()
    pingreq = b"\xc0\x00"
    packet = parse_connect(data + pingreq)
    assert packet is not None
    assert packet.size == len(data)


@pytest.mark.parametrize("level", [4, 5])
def test_every_prefix_needs_more(level: int) -> None:
    data = connect_bytes(b"split-across-records", level=level)
    for end in range(len(data)):
        assert parse_connect(data[:end]) is None, end
    assert parse_connect(data) is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x30\x05\x00\x01a\x00\x00", "a PUBLISH first"),
        (b"GET / HTTP/1.1\r\n", "HTTP"),
        (connect_bytes(first=0x12), "CONNECT with flags in the fixed header"),
        (connect_bytes(name=b"MQTX"), "unknown protocol name"),
        (connect_bytes(name=b"MQIsdp", level=4), "3.1's name with another level"),
        (connect_bytes(flags=0x03), "reserved flag set"),
        (connect_bytes(b"\xff\xfe"), "client ID not UTF-8"),
        (b"\x10\x03\x00\x04M", "a field longer than the packet"),
        (b"\x10\xff\xff\xff\xff\x01", "a five-byte remaining length"),
        (
            b"\x10" + _varint(11) + _string(b"MQTT") + b"\x05\x02\x00\x1e\x80\x80\x80\x80",
            "MQTT 5 properties length longer than four bytes",
        ),
    ],
)
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(MalformedPacketError):
        parse_connect(data)


def test_a_connect_larger_than_the_limit_is_refused_before_it_is_whole() -> None:
    header = b"\x10" + _varint(200_000)
    with pytest.raises(MalformedPacketError, match="larger"):
        parse_connect(header)
    data = connect_bytes(b"x" * 100)
    with pytest.raises(MalformedPacketError):
        parse_connect(data, max_size=len(data) - 1)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(MalformedPacketError):
        parse_connect(data)


@given(st.text(max_size=40), st.sampled_from([4, 5]), st.integers(0, 65535))
def test_round_trip(client_id: str, level: int, keepalive: int) -> None:
    data = connect_bytes(client_id.encode(), level=level, keepalive=keepalive)
    assert parse_connect(data) == ConnectPacket(level, client_id, True, keepalive, len(data))


@pytest.mark.parametrize(
    ("level", "outcome", "expected"),
    [
        (4, ConnackOutcome.NOT_AUTHORIZED, b"\x20\x02\x00\x05"),
        (4, ConnackOutcome.SERVER_UNAVAILABLE, b"\x20\x02\x00\x03"),
        (4, ConnackOutcome.QUOTA_EXCEEDED, b"\x20\x02\x00\x03"),
        (3, ConnackOutcome.UNSUPPORTED_PROTOCOL, b"\x20\x02\x00\x01"),
        (5, ConnackOutcome.NOT_AUTHORIZED, b"\x20\x03\x00\x87\x00"),
        (5, ConnackOutcome.SERVER_UNAVAILABLE, b"\x20\x03\x00\x88\x00"),
        (5, ConnackOutcome.QUOTA_EXCEEDED, b"\x20\x03\x00\x97\x00"),
        (5, ConnackOutcome.UNSUPPORTED_PROTOCOL, b"\x20\x03\x00\x84\x00"),
    ],
)
def test_connack(level: int, outcome: ConnackOutcome, expected: bytes) -> None:
    assert connack(level, outcome) == expected
