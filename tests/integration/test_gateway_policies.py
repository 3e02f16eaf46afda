"""The door authorizes by the certificate's IoT policies, on both MQTT levels, bytes on the wire.

Each test registers a device through the AWS APIs with a policy of its own,
then speaks raw MQTT (3.1.1 and 5) over mTLS to the region's door, so that
what AWS IoT answers (or does not answer) is what is asserted: a CONNECT
refused (3.1.1: closed without CONNACK; 5: CONNACK 0x87), a PUBLISH denied
(3.1.1: disconnected; 5: PUBACK 0x87), a SUBSCRIBE denied (SUBACK 0x80), a
message the device may not receive never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import TYPE_CHECKING, Any

import pytest

from simulators import DEFAULT_REGIONS
from simulators.gateway import POLICY_REASONS
from tests.integration import test_gateway
from tests.integration.test_gateway import EAST, WAIT_S, Regions, connect_packet, until
from tests.mqtt_bytes import publish, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from simulators import CertifiedKey
    from simulators.gateway import ThreadedRegionGateway

pytestmark = pytest.mark.integration

# The door's own test fixtures: the control plane and the Regions helper.
plane = test_gateway.plane
regions = test_gateway.regions

LEVELS = pytest.mark.parametrize("level", [4, 5], ids=["mqtt311", "mqtt5"])
ACCOUNT = "123456789012"


def arn(kind: str, name: str, region: str = EAST.name) -> str:
    return f"arn:aws:iot:{region}:{ACCOUNT}:{kind}/{name}"


def allow(actions: str | list[str], resources: str | list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


CONNECT_AS_THING = allow("iot:Connect", arn("client", "${iot:Connection.Thing.ThingName}"))


def register(
    regions: Regions, device: CertifiedKey, statements: list[dict[str, Any]], name: str
) -> str:
    """Register ``device`` in the primary with a policy of ``statements`` (and no other)."""
    iot = regions.iot(EAST)
    registered = iot.register_certificate_without_ca(
        certificatePem=device.cert_path.read_text(), status="ACTIVE"
    )
    document = json.dumps({"Version": "2012-10-17", "Statement": statements})
    iot.create_policy(policyName=name, policyDocument=document)
    iot.attach_policy(policyName=name, target=registered["certificateArn"])
    iot.create_thing(thingName=device.name)  # attached last: settled() waits for it
    iot.attach_thing_principal(thingName=device.name, principal=registered["certificateArn"])
    regions.attached[registered["certificateId"]] = device.name
    return str(registered["certificateId"])


async def with_policy(
    regions: Regions, name: str, statements: list[dict[str, Any]]
) -> tuple[ThreadedRegionGateway, CertifiedKey]:
    """A door of the primary, and a device registered there with a policy of ``statements``."""
    east = regions.gateway(EAST)
    device = regions.device(name)
    await settled(regions, east, register(regions, device, statements, name))
    return east, device


async def settled(regions: Regions, gateway: ThreadedRegionGateway, certificate_id: str) -> None:
    """Until the door holds the certificate ACTIVE, attached, with its policy's document."""
    await regions.settle(gateway, certificate_id, "ACTIVE")

    def policies_seen() -> bool:
        view = gateway.gateway.view
        record = view.certificate(certificate_id)
        return (
            record is not None
            and bool(record.policies)
            and all(view.policy(p) is not None for p in record.policies)
        )

    await until(policies_seen, "the door seeing the certificate's policies")


# -- raw MQTT -------------------------------------------------------------------------------------


class Wire:
    """One raw MQTT connection through the door."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def packet(self) -> bytes | None:
        """The next whole packet; None when the door closed the connection."""
        async with asyncio.timeout(WAIT_S):
            try:
                first = await self.reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return None
            length, shift, header = 0, 0, bytearray(first)
            while True:
                byte = (await self.reader.readexactly(1))[0]
                header.append(byte)
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            return bytes(header) + await self.reader.readexactly(length)

    async def packet_of(self, kind: int) -> bytes:
        """The next packet of ``kind`` (the type nibble), skipping others."""
        while True:
            packet = await self.packet()
            assert packet is not None, f"closed while waiting for packet type {kind}"
            if packet[0] >> 4 == kind:
                return packet

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def wire(
    regions: Regions, gateway: ThreadedRegionGateway, device: CertifiedKey, level: int
) -> AsyncIterator[Wire]:
    region = next(r for r in DEFAULT_REGIONS if r.name == gateway.region)
    reader, writer = await asyncio.open_connection(
        region.host,
        gateway.port,
        ssl=regions.context(device),
        server_hostname=region.endpoint,
    )
    connection = Wire(reader, writer)
    connection.send(connect_packet(device.name.encode(), level))
    try:
        yield connection
    finally:
        await connection.close()


def body(packet: bytes) -> bytes:
    """A packet without its fixed header."""
    offset = 1
    while packet[offset] & 0x80:
        offset += 1
    return packet[offset + 1 :]


async def admitted(connection: Wire) -> None:
    connack = await connection.packet()
    assert connack is not None
    assert connack[0] == 0x20
    assert body(connack)[1] == 0  # accepted


# -- the tests ------------------------------------------------------------------------------------


@LEVELS
async def test_a_connect_the_policy_does_not_allow_is_refused(regions: Regions, level: int) -> None:
    # The policy names the other region's client ARN: a region left behind by a rewrite.
    other = allow("iot:Connect", arn("client", "${iot:Connection.Thing.ThingName}", "us-west-2"))
    east, device = await with_policy(regions, f"elsewhere-{level}", [other])
    async with wire(regions, east, device, level) as connection:
        answer = await connection.packet()
        if level == 4:
            assert answer is None  # AWS closes an MQTT 3.1.1 connection without a CONNACK
        else:
            assert answer == b"\x20\x03\x00\x87\x00"  # MQTT 5: not authorized
            assert await connection.packet() is None
    status = east.status()
    assert status["refused"] == {"policy_connect_denied": 1}
    assert status["policy"]["policy_connect_denied"] == 1
    assert set(status["policy"]) == set(POLICY_REASONS)


@LEVELS
async def test_a_publish_the_policy_does_not_allow_is_denied(regions: Regions, level: int) -> None:
    east, device = await with_policy(
        regions,
        f"publisher-{level}",
        [
            CONNECT_AS_THING,
            allow("iot:Publish", arn("topic", "${iot:Connection.Thing.ThingName}/*")),
            allow("iot:Receive", arn("topic", "*")),
            allow("iot:Subscribe", arn("topicfilter", "*")),
        ],
    )
    async with wire(regions, east, device, level) as connection:
        await admitted(connection)
        connection.send(publish(f"{device.name}/telemetry", b"ok", level=level, packet_id=1))
        puback = await connection.packet_of(4)
        assert body(puback)[:2] == b"\x00\x01"
        assert body(puback)[2:3] < b"\x80"  # success (MQTT 5: 0x10 "no subscribers" is one too)
        connection.send(publish("someone-else/telemetry", b"no", level=level, packet_id=2))
        if level == 4:
            assert await connection.packet() is None  # AWS disconnects an MQTT 3.1.1 client
        else:
            assert await connection.packet_of(4) == b"\x40\x03\x00\x02\x87"  # not authorized
            connection.send(publish(f"{device.name}/telemetry", b"still", level=level, packet_id=3))
            assert body(await connection.packet_of(4))[:2] == b"\x00\x03"  # still connected
    await until(lambda: east.status()["denied"] == {"policy_publish_denied": 1}, "the count")
    assert east.status()["policy"]["policy_publish_denied"] == 1


@LEVELS
async def test_a_subscribe_the_policy_does_not_allow_is_answered_0x80(
    regions: Regions, level: int
) -> None:
    east, device = await with_policy(
        regions,
        f"subscriber-{level}",
        [
            CONNECT_AS_THING,
            allow(["iot:Publish", "iot:Receive"], arn("topic", "*")),
            allow("iot:Subscribe", arn("topicfilter", "open/*")),
        ],
    )
    async with wire(regions, east, device, level) as connection:
        await admitted(connection)
        properties = b"\x00" if level == 5 else b""
        # Every filter denied: the door answers alone.
        connection.send(subscribe(7, "closed/#", level=level))
        assert await connection.packet_of(9) == b"\x90" + bytes((3 + len(properties),)) + (
            b"\x00\x07" + properties + b"\x80"
        )
        # Some denied: the broker grants the others, the door puts 0x80 in their places.
        connection.send(subscribe(8, "closed/a", "open/#", "closed/b", level=level))
        suback = body(await connection.packet_of(9))
        assert suback[:2] == b"\x00\x08"
        assert suback[-3:] == b"\x80\x01\x80"
        # The granted filter works.
        connection.send(publish("open/x", b"hello", level=level, qos=0))
        message = await connection.packet_of(3)
        assert message.endswith(b"hello")
    await until(lambda: east.status()["denied"] == {"policy_subscribe_denied": 3}, "the count")


@LEVELS
async def test_a_message_the_policy_does_not_allow_to_receive_is_not_delivered(
    regions: Regions, level: int
) -> None:
    east, device = await with_policy(
        regions,
        f"receiver-{level}",
        [
            CONNECT_AS_THING,
            allow("iot:Publish", arn("topic", "*")),
            allow("iot:Subscribe", arn("topicfilter", "*")),
            allow("iot:Receive", arn("topic", "inbox/*")),
        ],
    )
    async with wire(regions, east, device, level) as connection:
        await admitted(connection)
        connection.send(subscribe(1, "inbox/#", "secret/#", level=level))
        assert body(await connection.packet_of(9))[-2:] == b"\x01\x01"
        # In order: the secret one first (QoS 1: the door acks it to the broker), then one
        # the device may receive. Only the second arrives.
        connection.send(publish("secret/1", b"hidden", level=level, packet_id=11))
        connection.send(publish("inbox/1", b"visible", level=level, packet_id=12))
        delivered = await connection.packet_of(3)
        assert delivered.endswith(b"visible")
        assert b"hidden" not in delivered
        # The broker was not left waiting: a third message still comes through.
        connection.send(publish("inbox/2", b"again", level=level, qos=0))
        assert (await connection.packet_of(3)).endswith(b"again")
    await until(lambda: east.status()["denied"] == {"policy_receive_denied": 1}, "the count")


@LEVELS
async def test_a_malformed_packet_after_admission_closes_only_that_connection(
    regions: Regions, level: int
) -> None:
    east, device = await with_policy(
        regions,
        f"garbled-{level}",
        [
            CONNECT_AS_THING,
            allow(["iot:Publish", "iot:Receive"], arn("topic", "ok/*")),
            allow("iot:Subscribe", arn("topicfilter", "*")),
        ],
    )
    async with wire(regions, east, device, level) as connection:
        await admitted(connection)
        connection.send(b"\x32\x05\xff\xff\xff\xff\xff")  # a topic longer than its packet
        assert await connection.packet() is None
    assert east.status()["cut"] == {"malformed": 1}
    async with wire(regions, east, device, level) as again:  # the door goes on
        await admitted(again)


async def test_a_new_default_version_applies_to_the_next_connect(regions: Regions) -> None:
    east, device = await with_policy(regions, "versioned", [CONNECT_AS_THING])
    for _ in range(2):
        async with wire(regions, east, device, 5) as connection:
            await admitted(connection)
    cache = east.status()["authorizers"]
    assert (cache["misses"], cache["hits"]) == (1, 1)  # bound once per (certificate, versions)
    other = allow("iot:Connect", arn("client", "someone-else"))
    document = json.dumps({"Version": "2012-10-17", "Statement": [other]})
    regions.iot(EAST).create_policy_version(
        policyName="versioned", policyDocument=document, setAsDefault=True
    )

    def version() -> str | None:
        found = east.gateway.view.policy("versioned")
        return found.version if found is not None else None

    await until(lambda: version() == "2", "the door seeing version 2")
    async with wire(regions, east, device, 5) as connection:
        assert await connection.packet() == b"\x20\x03\x00\x87\x00"
    assert east.status()["refused"] == {"policy_connect_denied": 1}


async def test_a_malformed_policy_grants_nothing_and_the_door_goes_on(regions: Regions) -> None:
    broken = {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Oops": 1}
    east, device = await with_policy(regions, "malformed-policy", [broken])
    async with wire(regions, east, device, 5) as connection:
        assert await connection.packet() == b"\x20\x03\x00\x87\x00"
    assert east.status()["refused"] == {"policy_connect_denied": 1}
    fine = regions.device("fine")
    await regions.settle(east, regions.register(EAST, fine), "ACTIVE")
    session = await regions.admitted(east, fine)
    await session.round_trip()
