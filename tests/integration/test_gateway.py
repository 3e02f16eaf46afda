"""The regions' door on loopback: admission, revocation, JITR, quotas, faults, bad input.

Each test runs a broker per region (``region_brokers``), the control plane
(moto) publishing to them, and gateways in threads of their own in front of
the brokers; devices are the agent's own ``PahoTransport`` (MQTT 3.1.1), or
raw TLS sockets where the bytes on the wire are the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import queue
import ssl
import time
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from device_agent.testing import FakeClock
from simulators import DEFAULT_REGIONS, CertifiedKey, FleetPKI, TLSFiles
from simulators._errors import GatewayError
from simulators._pki import generate_private_key, private_key_from_pem, write_private_key
from simulators._regions import attach_device_policy
from simulators.controlplane import DEFAULT_TPS, DEVICE_POLICY_NAME, start_control_plane
from simulators.gateway import (
    AdmissionPolicy,
    ConnectLimits,
    GatewayAdmin,
    GatewayConfig,
    GatewayFault,
    RegistrySyncConfig,
    ThreadedRegionGateway,
)
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from mypy_boto3_iot import IoTClient

    from simulators import Broker, LocalRegion
    from simulators.controlplane import ControlPlane
    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration

EAST, WEST = DEFAULT_REGIONS
WAIT_S = 5.0
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10)
# Most tests reconnect a client ID at once; the per-client-ID rate has a test of its own.
FAST = ConnectLimits(client_id_per_s=1000)
ALL_TPS = dict.fromkeys(DEFAULT_TPS, 1000.0) | {"default": 1000.0}


@pytest.fixture
def plane(region_brokers: dict[str, Broker], tmp_path: Path) -> Iterator[ControlPlane]:
    brokers = {region: (broker.host, broker.port) for region, broker in region_brokers.items()}
    with start_control_plane(state_dir=tmp_path, brokers=brokers, quotas=ALL_TPS) as started:
        yield started


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for ``predicate`` (polled), or fail saying ``what`` did not happen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)


class Session:
    """A device connected through a gateway."""

    def __init__(self, transport: PahoTransport, client_id: str) -> None:
        self.transport = transport
        self.client_id = client_id
        self.lost = asyncio.Event()
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribed = False

    @property
    def topic(self) -> str:
        return f"t/{self.client_id}"

    async def subscribe(self) -> None:
        if not self._subscribed:
            await self.transport.subscribe(self.topic, 1)
            self._subscribed = True

    async def round_trip(self, payload: bytes = b"ping") -> None:
        await self.subscribe()
        await asyncio.wait_for(self.transport.publish(self.topic, payload, 1), WAIT_S)
        assert await asyncio.wait_for(self.messages.get(), WAIT_S) == payload

    async def lost_within(self, timeout_s: float = WAIT_S) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.lost.wait(), timeout_s)
        return self.lost.is_set()

    async def close(self) -> None:
        await self.transport.disconnect()


class Regions:
    """The control plane, the brokers and the fleet PKI, and the gateways a test starts."""

    def __init__(
        self,
        fleet: FleetFixture,
        brokers: dict[str, Broker],
        plane: ControlPlane,
        tmp_path: Path,
    ) -> None:
        self.fleet = fleet
        self.brokers = brokers
        self.plane = plane
        self.tmp_path = tmp_path
        self.gateways: list[ThreadedRegionGateway] = []
        self.attached: dict[str, str] = {}  # certificate id -> the thing register() attached
        self.sessions: list[Session] = []
        self._clients: dict[str, IoTClient] = {}

    def iot(self, region: LocalRegion) -> IoTClient:
        if region.name not in self._clients:
            self._clients[region.name] = boto3.client(
                "iot",
                region_name=region.name,
                endpoint_url=self.plane.url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=NO_RETRIES,
            )
        return self._clients[region.name]

    def gateway(
        self,
        region: LocalRegion,
        *,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> ThreadedRegionGateway:
        server = self.fleet.servers[region.name]
        broker = self.brokers[region.name]
        settings: dict[str, Any] = {
            "limits": FAST,
            "sync": RegistrySyncConfig(long_poll_s=5.0),
            **overrides,
        }
        config = GatewayConfig(
            region=region.name,
            host=region.host,
            tls=TLSFiles(
                ca_path=self.fleet.pki.ca_path,
                cert_path=server.cert_path,
                key_path=server.key_path,
            ),
            broker=(broker.host, broker.port),
            control_plane_url=self.plane.url,
            **settings,
        )
        gateway = ThreadedRegionGateway(config, clock=clock)
        gateway.start()
        self.gateways.append(gateway)
        return gateway

    def device(self, name: str) -> CertifiedKey:
        return self.fleet.pki.issue_device(name)

    def register(
        self, region: LocalRegion, device: CertifiedKey, *, thing: str | None = None
    ) -> str:
        """RegisterCertificateWithoutCA (ACTIVE), CreateThing, AttachThingPrincipal."""
        iot = self.iot(region)
        registered = iot.register_certificate_without_ca(
            certificatePem=device.cert_path.read_text(), status="ACTIVE"
        )
        name = thing or device.name
        iot.create_thing(thingName=name)
        # The policy first: once the door sees the thing attached, it has the policy too.
        attach_device_policy(iot, registered["certificateArn"])
        iot.attach_thing_principal(thingName=name, principal=registered["certificateArn"])
        self.attached[registered["certificateId"]] = name
        return registered["certificateId"]

    async def settle(
        self,
        gateway: ThreadedRegionGateway,
        certificate_id: str,
        status: str | None,
        *,
        thing: str | None = None,
    ) -> None:
        """Wait until ``gateway`` sees the certificate with ``status`` (None: not at all).

        With ``thing``, also until the certificate is attached to it there: the
        attachment is a change of its own and may come after the status.
        """

        thing = thing or (self.attached.get(certificate_id) if status == "ACTIVE" else None)

        def seen() -> bool:
            found = gateway.gateway.view.certificate(certificate_id)
            if thing is not None and (found is None or thing not in found.things):
                return False
            return (found.status if found is not None else None) == status

        await until(seen, f"{gateway.region} seeing {certificate_id[:12]} as {status}")

    def context(self, device: CertifiedKey) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.fleet.pki.ca_path))
        context.load_cert_chain(str(device.cert_path), str(device.key_path))
        return context

    async def connect(
        self,
        gateway: ThreadedRegionGateway,
        device: CertifiedKey,
        *,
        client_id: str | None = None,
        timeout_s: float = 3.0,
    ) -> Session | str:
        """Connect as ``device``: a session, or the kind of failure (refused, closed, ...)."""
        region = next(r for r in DEFAULT_REGIONS if r.name == gateway.region)
        name = client_id or device.name
        params = ConnectParams(
            endpoint=Endpoint(region.name, region.endpoint, gateway.port),
            address=region.host,
            client_id=name,
            ssl_context=self.context(device),
            timeout_s=timeout_s,
        )
        session: Session | None = None

        def on_message(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            assert session is not None
            session.messages.put_nowait(payload)

        def on_lost(kind: str) -> None:
            assert session is not None
            session.lost.set()

        transport = PahoTransport(params, TransportCallbacks(on_message, on_lost))
        session = Session(transport, name)
        try:
            await transport.connect()
        except ConnectError as exc:
            return exc.kind
        self.sessions.append(session)
        return session

    async def admitted(self, gateway: ThreadedRegionGateway, device: CertifiedKey) -> Session:
        session = await self.connect(gateway, device)
        assert isinstance(session, Session), f"{device.name} refused: {session}"
        return session

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()


@pytest.fixture
async def regions(
    fleet_pki: FleetFixture,
    region_brokers: dict[str, Broker],
    plane: ControlPlane,
    tmp_path: Path,
) -> AsyncIterator[Regions]:
    running = Regions(fleet_pki, region_brokers, plane, tmp_path)
    try:
        yield running
    finally:
        for session in running.sessions:
            with contextlib.suppress(Exception):
                await session.close()
        running.stop()


# -- admission by the region's registry ------------------------------------------------------------


async def test_a_device_is_admitted_only_where_its_certificate_is_registered_and_active(
    regions: Regions,
) -> None:
    east, west = regions.gateway(EAST), regions.gateway(WEST)
    device = regions.device("pump-1")
    east_id = regions.register(EAST, device)
    await regions.settle(east, east_id, "ACTIVE")
    in_east = await regions.admitted(east, device)
    await in_east.round_trip()

    assert await regions.connect(west, device) == "closed"  # AWS: no CONNACK for 3.1.1
    await until(lambda: west.status()["refused"] == {"certificate_unknown": 1}, "counted")

    west_id = regions.register(WEST, device)  # RegisterCertificateWithoutCA in us-west-2
    await regions.settle(west, west_id, "ACTIVE")
    in_west = await regions.admitted(west, device)
    await in_west.round_trip()

    regions.iot(WEST).update_certificate(certificateId=west_id, newStatus="REVOKED")
    assert await in_west.lost_within(), "revoking the certificate cuts its live connection"
    assert await regions.connect(west, device) == "closed"
    status = west.status()
    assert status["cut"] == {"certificate_revoked": 1}
    assert status["refused"]["certificate_revoked"] == 1
    assert status["connections"]["live"] == 0
    assert status["admitted"] == 1

    await in_east.round_trip()  # the other region never heard of it
    assert not in_east.lost.is_set()


async def test_deactivating_or_deleting_a_certificate_cuts_and_refuses(regions: Regions) -> None:
    east = regions.gateway(EAST)
    iot = regions.iot(EAST)
    device = regions.device("pump-2")
    certificate_id = regions.register(EAST, device)
    await regions.settle(east, certificate_id, "ACTIVE")
    session = await regions.admitted(east, device)
    iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
    assert await session.lost_within()
    assert await regions.connect(east, device) == "closed"
    iot.update_certificate(certificateId=certificate_id, newStatus="ACTIVE")
    await regions.settle(east, certificate_id, "ACTIVE")
    again = await regions.admitted(east, device)
    iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
    assert await again.lost_within()
    arn = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"][
        "certificateArn"
    ]
    iot.detach_thing_principal(thingName="pump-2", principal=arn)
    iot.detach_policy(policyName=DEVICE_POLICY_NAME, target=arn)  # AWS: policies first
    iot.delete_certificate(certificateId=certificate_id)
    await regions.settle(east, certificate_id, None)
    assert await regions.connect(east, device) == "closed"
    assert east.status()["refused"]["certificate_unknown"] == 1
    assert east.status()["cut"] == {"certificate_inactive": 2}


async def test_the_client_id_must_be_a_thing_attached_to_the_certificate(
    regions: Regions,
) -> None:
    strict = regions.gateway(EAST)  # by the device policy: client/${iot:Connection.Thing.ThingName}
    thing_rule = regions.gateway(EAST, admission=AdmissionPolicy(authorization="thing"))
    anyone = regions.gateway(EAST, admission=AdmissionPolicy(authorization="any"))
    device = regions.device("pump-3")
    certificate_id = regions.register(EAST, device)
    for gateway in (strict, thing_rule, anyone):
        await regions.settle(gateway, certificate_id, "ACTIVE")
    assert await regions.connect(strict, device, client_id="someone-else") == "closed"
    assert strict.status()["refused"] == {"policy_connect_denied": 1}
    assert await regions.connect(thing_rule, device, client_id="someone-else") == "closed"
    assert thing_rule.status()["refused"] == {"client_id_not_allowed": 1}
    session = await regions.connect(anyone, device, client_id="someone-else")
    assert isinstance(session, Session)
    await session.round_trip()


async def test_the_door_keeps_admitting_while_the_control_plane_is_away(
    regions: Regions, plane: ControlPlane
) -> None:
    east = regions.gateway(EAST)
    device = regions.device("pump-6")
    await regions.settle(east, regions.register(EAST, device), "ACTIVE")
    plane.set_outage(EAST.name, "http503")  # control-plane-down: the APIs fail, not the door
    with pytest.raises(botocore.exceptions.ClientError, match="ServiceUnavailable"):
        regions.iot(EAST).list_things()
    await (await regions.admitted(east, device)).round_trip()
    assert east.status()["registry"]["reachable"]
    plane.stop()  # the control plane gone altogether
    await until(lambda: not east.status()["registry"]["reachable"], "the outage noticed")
    await (await regions.admitted(east, device)).round_trip()  # by the view in memory


# -- what a refusal looks like on the wire ---------------------------------------------------------


def connect_packet(client_id: bytes, level: int) -> bytes:
    name = b"MQIsdp" if level == 3 else b"MQTT"
    variable = len(name).to_bytes(2, "big") + name + bytes((level, 0x02)) + b"\x00\x1e"
    if level == 5:
        variable += b"\x00"  # no properties
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    return bytes((0x10, len(body))) + body


async def exchange(
    gateway: ThreadedRegionGateway, payload: bytes, context: ssl.SSLContext | None
) -> bytes | str:
    """Send ``payload`` (over TLS if ``context``), read until the gateway closes; or the error."""
    region = next(r for r in DEFAULT_REGIONS if r.name == gateway.region)
    try:
        async with asyncio.timeout(WAIT_S):
            reader, writer = await asyncio.open_connection(
                region.host,
                gateway.port,
                ssl=context,
                server_hostname=region.endpoint if context is not None else None,
            )
            try:
                writer.write(payload)
                return await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize(
    ("level", "refusal", "answer"),
    [
        (4, "close", b""),  # AWS closes an MQTT 3.1.1 connection without a CONNACK
        (5, "close", b"\x20\x03\x00\x87\x00"),  # MQTT 5: CONNACK "not authorized"
        (4, "connack", b"\x20\x02\x00\x05"),  # opt-in: CONNACK 5 for 3.1.1 too
        (3, "close", b"\x20\x02\x00\x01"),  # MQTT 3.1: "unacceptable protocol version"
    ],
)
async def test_refusals_on_the_wire(
    regions: Regions, level: int, refusal: str, answer: bytes
) -> None:
    gateway = regions.gateway(WEST, admission=AdmissionPolicy(refusal=refusal))  # type: ignore[arg-type]
    device = regions.device(f"wire-{level}-{refusal}")  # registered nowhere
    got = await exchange(
        gateway, connect_packet(device.name.encode(), level), regions.context(device)
    )
    assert got == answer


# -- JITR ------------------------------------------------------------------------------------------


class EventWatcher:
    """Subscribed to a topic filter on a broker's plain listener."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.probe = ProbeClient("jitr-watcher")
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._granted: queue.Queue[int] = queue.Queue()
        self.probe.client.on_message = lambda client, userdata, message: self.messages.put(
            (message.topic, json.loads(message.payload))
        )
        self.probe.client.on_subscribe = lambda *args: self._granted.put(1)
        assert self.probe.connect(broker.host, broker.port), self.probe.reason
        self.probe.client.subscribe(topic_filter, qos=1)
        self._granted.get(timeout=WAIT_S)

    async def next(self) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self.messages.get, True, WAIT_S)


async def test_jitr_registers_pending_publishes_and_admits_once_a_handler_activates(
    regions: Regions, region_brokers: dict[str, Broker], tmp_path: Path
) -> None:
    west = regions.gateway(WEST)
    iot = regions.iot(WEST)
    other_ca = FleetPKI.create(tmp_path / "jitr-ca", common_name="iotdr JITR CA")
    device = other_ca.issue_device("sensor-1")
    watcher = EventWatcher(region_brokers[WEST.name], "$aws/events/certificates/registered/#")
    try:
        ca = iot.register_ca_certificate(
            caCertificate=other_ca.ca_path.read_text(), setAsActive=True, allowAutoRegistration=True
        )
        ca_id = ca["certificateId"]
        description = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
        assert description["autoRegistrationStatus"] == "ENABLE"
        await until(lambda: west.gateway.view.ca_count == 1, "the gateway learning the CA")

        # The first connect registers the certificate and is dropped.
        assert await regions.connect(west, device) == "closed"
        topic, event = await watcher.next()
        assert topic == f"$aws/events/certificates/registered/{ca_id}"
        assert set(event) == {
            "certificateId", "caCertificateId", "timestamp", "certificateStatus",
            "awsAccountId", "certificateRegistrationTimestamp",
        }  # fmt: skip
        assert event["certificateId"] == device.certificate_id
        assert event["caCertificateId"] == ca_id
        assert event["certificateStatus"] == "PENDING_ACTIVATION"
        assert event["awsAccountId"] == "123456789012"
        described = iot.describe_certificate(certificateId=device.certificate_id)
        assert described["certificateDescription"]["status"] == "PENDING_ACTIVATION"

        # Before the handler acts, the device is refused (and not registered twice).
        assert await regions.connect(west, device) == "closed"

        # The handler: activate, create the thing, attach it and the policy.
        iot.update_certificate(certificateId=event["certificateId"], newStatus="ACTIVE")
        iot.create_thing(thingName="sensor-1")
        attach_device_policy(iot, described["certificateDescription"]["certificateArn"])
        iot.attach_thing_principal(
            thingName="sensor-1", principal=described["certificateDescription"]["certificateArn"]
        )
        await regions.settle(west, device.certificate_id, "ACTIVE")
        await until(
            lambda: "sensor-1" in west.gateway.view.certificate(device.certificate_id).things,  # type: ignore[union-attr]
            "the gateway seeing the thing attached",
        )
        session = await regions.admitted(west, device)
        await session.round_trip()
        status = west.status()
        assert status["jitr_registrations"] == 1
        assert status["refused"] == {"jitr": 1, "certificate_pending_activation": 1}
        assert watcher.messages.empty()
    finally:
        watcher.probe.close()


# -- CONNECT quotas --------------------------------------------------------------------------------


async def test_a_burst_above_the_account_rate_is_partly_refused_and_gets_in_on_retry(
    regions: Regions,
) -> None:
    clock = FakeClock(1000.0)  # the gateway's clock: quota tests do not depend on machine speed
    east = regions.gateway(
        EAST, limits=ConnectLimits(account_per_s=5, client_id_per_s=1), clock=clock.monotonic
    )
    devices = [regions.device(f"burst-{n}") for n in range(12)]
    ids = [regions.register(EAST, device) for device in devices]
    await regions.settle(east, ids[-1], "ACTIVE")
    first = await asyncio.gather(*(regions.connect(east, d) for d in devices))
    refused = [d for d, r in zip(devices, first, strict=True) if not isinstance(r, Session)]
    assert len(refused) == 7, "the account's burst is 5"
    assert {r for r in first if not isinstance(r, Session)} == {"closed"}
    assert east.status()["refused"] == {"throttled_account": 7}

    # Each second refills five tokens; a throttled CONNECT took none, not even its client ID's.
    for expected_in, expected_out in ((5, 2), (2, 0)):
        clock.advance(1.0)
        again = await asyncio.gather(*(regions.connect(east, d) for d in refused))
        assert sum(isinstance(r, Session) for r in again) == expected_in
        refused = [d for d, r in zip(refused, again, strict=True) if not isinstance(r, Session)]
        assert len(refused) == expected_out
    assert east.status()["connections"]["live"] == len(devices)
    assert east.status()["refused"] == {"throttled_account": 9}


async def test_one_connect_per_second_per_client_id(regions: Regions) -> None:
    clock = FakeClock(1000.0)
    east = regions.gateway(
        EAST, limits=ConnectLimits(), clock=clock.monotonic
    )  # AWS: 1/s per client ID
    device = regions.device("pump-4")
    await regions.settle(east, regions.register(EAST, device), "ACTIVE")
    session = await regions.admitted(east, device)
    await session.close()
    clock.advance(0.9)
    assert await regions.connect(east, device) == "closed"
    assert east.status()["refused"] == {"throttled_client_id": 1}
    clock.advance(0.1)
    await (await regions.admitted(east, device)).round_trip()


async def test_a_second_connection_with_the_same_client_id_kicks_the_first(
    regions: Regions,
) -> None:
    east = regions.gateway(EAST)
    device = regions.device("pump-5")
    await regions.settle(east, regions.register(EAST, device), "ACTIVE")
    older = await regions.admitted(east, device)
    newer = await regions.admitted(east, device)
    assert await older.lost_within()
    await newer.round_trip()
    assert not newer.lost.is_set()
    status = east.status()
    assert status["cut"] == {"duplicate_client_id": 1}
    assert status["connections"]["live"] == 1


# -- faults ----------------------------------------------------------------------------------------


async def _connected(regions: Regions, gateway: ThreadedRegionGateway, name: str) -> Session:
    device = regions.device(name)
    await regions.settle(gateway, regions.register(EAST, device), "ACTIVE", thing=device.name)
    session = await regions.admitted(gateway, device)
    await session.round_trip()
    return session


async def _stalls(session: Session, payload: bytes) -> asyncio.Task[None]:
    """Publish QoS 1 and check that no PUBACK comes within a second; the publish stays pending."""
    pending = asyncio.ensure_future(session.transport.publish(session.topic, payload, 1))
    done, _ = await asyncio.wait({pending}, timeout=1.0)
    assert not done, "no byte may pass"
    return pending


async def test_down_resets_live_connections_and_refuses_new_ones(regions: Regions) -> None:
    east = regions.gateway(EAST)
    session = await _connected(regions, east, "down-1")
    device = regions.device("down-1")  # the same thing name: a new key, not registered
    east.set_fault("down")
    assert await session.lost_within()
    assert await regions.connect(east, device) == "refused"  # nothing listens: RST
    assert east.status()["cut"] == {"fault_down": 1}
    assert not east.status()["listening"]
    east.set_fault("up")
    await (await _connected(regions, east, "down-2")).round_trip()


async def test_blackhole_freezes_live_connections_and_times_out_new_ones(
    regions: Regions,
) -> None:
    east = regions.gateway(EAST)
    admin = GatewayAdmin(str(east.admin_url))
    session = await _connected(regions, east, "hole-1")
    other = regions.device("hole-2")
    await regions.settle(east, regions.register(EAST, other), "ACTIVE")

    assert admin.set_fault("blackhole") == {"mode": "blackhole"}
    pending = await _stalls(session, b"during")
    assert await regions.connect(east, other, timeout_s=1.0) == "timeout"
    assert not session.lost.is_set(), "no RST, no FIN"
    connections = admin.status()["connections"]
    assert connections["frozen"] == 1

    admin.set_fault("up")
    await asyncio.wait_for(pending, WAIT_S)  # the frozen connection resumes, as TCP would
    assert await asyncio.wait_for(session.messages.get(), WAIT_S) == b"during"
    assert not session.lost.is_set()
    await (await regions.admitted(east, other)).round_trip()
    await until(lambda: admin.status()["connections"]["held"] == 0, "held connections dropped")


async def test_partial_serves_the_health_checker_and_silences_devices(regions: Regions) -> None:
    checker_only = GatewayFault(exempt_client_ids=frozenset({"health-checker"}))
    east = regions.gateway(EAST, faults=checker_only)
    session = await _connected(regions, east, "field-1")
    checker = regions.device("health-checker")
    await regions.settle(east, regions.register(EAST, checker), "ACTIVE")
    device = regions.device("field-2")
    await regions.settle(east, regions.register(EAST, device), "ACTIVE")

    east.set_fault("partial")
    probe = await regions.admitted(east, checker)
    await probe.round_trip()  # the health checker sees a healthy region
    pending = await _stalls(session, b"partial")
    assert await regions.connect(east, device, timeout_s=1.0) == "timeout"  # CONNECT unanswered
    assert east.status()["refused"]["fault_partial"] == 1

    east.set_fault("up")
    await asyncio.wait_for(pending, WAIT_S)
    await (await regions.admitted(east, device)).round_trip()
    await probe.round_trip()


async def test_partial_can_reset_devices_instead(regions: Regions) -> None:
    east = regions.gateway(EAST, faults=GatewayFault(partial_effect="down"))
    session = await _connected(regions, east, "field-3")
    east.set_fault("partial")
    assert await session.lost_within()
    assert await regions.connect(east, regions.device("field-3")) == "closed"
    east.set_fault("up")
    await (await _connected(regions, east, "field-4")).round_trip()


async def test_degraded_adds_latency_and_refuses_new_connects(regions: Regions) -> None:
    east = regions.gateway(EAST, faults=GatewayFault(latency_s=0.3))
    session = await _connected(regions, east, "slow-1")
    device = regions.device("slow-2")
    await regions.settle(east, regions.register(EAST, device), "ACTIVE")

    east.set_fault("degraded")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await session.round_trip(b"slow")
    assert loop.time() - started >= 0.55, "0.3 s each way"
    assert await regions.connect(east, device) == "unavailable"  # CONNACK "server unavailable"
    assert east.status()["refused"] == {"fault_degraded": 1}

    east.set_fault("up")
    await (await regions.admitted(east, device)).round_trip()
    await session.round_trip()


async def test_an_unknown_fault_mode_is_one_clear_error(regions: Regions) -> None:
    east = regions.gateway(EAST)
    with pytest.raises(GatewayError, match="unknown fault mode 'sideways'"):
        east.set_fault("sideways")
    with pytest.raises(GatewayError, match="unknown fault mode 'sideways'"):
        GatewayAdmin(str(east.admin_url)).set_fault("sideways")
    assert east.status()["fault"] == {"mode": "up"}


# -- bad input -------------------------------------------------------------------------------------


def _expired_device(fleet: FleetFixture, folder: Path) -> CertifiedKey:
    key = generate_private_key("ec")
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")]))
        .issuer_name(fleet.pki.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key_from_pem(fleet.pki.ca_key_pem), hashes.SHA256())
    )
    cert_path, key_path = folder / "expired.crt", folder / "expired.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, key)
    return CertifiedKey("expired", cert_path, key_path, certificate)


async def test_bad_input_is_refused_counted_and_disturbs_nothing(
    regions: Regions, tmp_path: Path
) -> None:
    east = regions.gateway(EAST, connect_timeout_s=0.5)
    session = await _connected(regions, east, "steady-1")
    good = regions.device("steady-2")
    await regions.settle(east, regions.register(EAST, good), "ACTIVE")
    anonymous = ssl.create_default_context(cafile=str(regions.fleet.pki.ca_path))
    stranger = FleetPKI.create(tmp_path / "stranger").issue_device("stranger")
    expired = _expired_device(regions.fleet, tmp_path)

    await exchange(east, connect_packet(b"steady-2", 4), None)  # MQTT without TLS
    await exchange(east, b"\x00" * 64, anonymous)  # TLS without a client certificate
    await exchange(east, connect_packet(b"stranger", 4), regions.context(stranger))
    await exchange(east, connect_packet(b"expired", 4), regions.context(expired))
    assert await exchange(east, b"GET / HTTP/1.1\r\n\r\n", regions.context(good)) == b""
    assert await exchange(east, b"", regions.context(good)) == b""  # says nothing: timed out

    expected = {
        "tls_not_tls": 1,
        "tls_no_certificate": 1,
        "tls_unknown_ca": 1,
        "tls_certificate_expired": 1,
        "malformed": 1,
        "connect_timeout": 1,
    }
    await until(lambda: east.status()["refused"] == expected, f"refusals counted {expected}")
    await session.round_trip()
    assert not session.lost.is_set()
    await (await regions.admitted(east, good)).round_trip()
    assert east.status()["connections"] == {"live": 2, "frozen": 0, "held": 0, "pending": 0}
