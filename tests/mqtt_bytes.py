"""MQTT packets as bytes, for tests that put them on the wire or feed them to the door's guard."""

from __future__ import annotations


def string(text: str) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the text."""
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes) -> bytes:
    """A packet: the first byte, the remaining length (variable byte integer), the body."""
    length, header = len(body), bytearray((first,))
    while True:
        byte, length = length & 0x7F, length >> 7
        header.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(header) + body


def publish(
    topic: str,
    payload: bytes = b"payload",
    *,
    level: int = 4,
    qos: int = 1,
    packet_id: int = 1,
    props: bytes = b"",
) -> bytes:
    """A PUBLISH (MQTT 3.1.1, or 5 with ``props`` as its properties)."""
    body = string(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
    if level == 5:
        body += bytes((len(props),)) + props
    return packet(0x30 | (qos << 1), body + payload)


def subscribe(packet_id: int, *filters: str, level: int = 4) -> bytes:
    """A SUBSCRIBE of ``filters``, each at QoS 1."""
    body = packet_id.to_bytes(2, "big") + (b"\x00" if level == 5 else b"")
    return packet(0x82, body + b"".join(string(f) + b"\x01" for f in filters))
