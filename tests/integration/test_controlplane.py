"""The local control plane as a process: boto3 per region, registry events on the region brokers."""

from __future__ import annotations

import json
import os
import queue
import socket
import time
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulators import AddressInUseError, certificate_id, free_port
from simulators._pki import build_csr, generate_private_key
from simulators.controlplane import (
    ControlPlane,
    ControlPlaneAdmin,
    ControlPlaneError,
    start_control_plane,
)
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from mypy_boto3_iot import IoTClient
    from paho.mqtt.client import Client
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from simulators import Broker
    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration

JsonObject = dict[str, Any]
WAIT_S = 5.0
EAST, WEST = "us-east-1", "us-west-2"
# One attempt, no retry (botocore's "max_attempts" counts retries; "total_max_attempts" counts
# attempts), so that throttling and outages surface at once.
NO_RETRIES = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=5
)


def iot(plane: ControlPlane, region: str) -> IoTClient:
    assert plane.url.startswith("http://127.0.0.1:")  # loopback only, fake credentials
    return boto3.client(
        "iot",
        region_name=region,
        endpoint_url=plane.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


@pytest.fixture
def plane(region_brokers: dict[str, Broker], tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane publishing each region's events on that region's broker."""
    brokers = {region: (broker.host, broker.port) for region, broker in region_brokers.items()}
    # The events test deletes a type right after deprecating it: no 5-minute wait here.
    with start_control_plane(
        state_dir=tmp_path, brokers=brokers, thing_type_delete_after_s=0
    ) as started:
        yield started


@pytest.fixture
def bare_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane without brokers, CreateThing limited to 5 TPS."""
    with start_control_plane(state_dir=tmp_path, brokers={}, quotas={"CreateThing": 5}) as started:
        yield started


class EventSubscriber:
    """Subscribed to ``$aws/events/#`` on a broker's plain listener; collects what arrives."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.probe = ProbeClient(client_id)
        self._granted: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[tuple[str, JsonObject]] = queue.Queue()
        self.probe.client.on_subscribe = self._on_subscribe
        self.probe.client.on_message = lambda client, userdata, message: self.messages.put(
            (message.topic, json.loads(message.payload))
        )
        assert self.probe.connect(broker.host, broker.port), self.probe.reason
        self.probe.client.subscribe("$aws/events/#", qos=1)
        self._granted.get(timeout=WAIT_S)

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._granted.put(mid)

    def until(self, topic: str) -> list[tuple[str, JsonObject]]:
        """Everything up to and including ``topic``: events of a region arrive in call order."""
        seen = []
        while True:
            try:
                seen.append(self.messages.get(timeout=WAIT_S))
            except queue.Empty:
                pytest.fail(f"no {topic} within {WAIT_S} s; got {[t for t, _ in seen]}")
            if seen[-1][0] == topic:
                return seen

    def close(self) -> None:
        self.probe.close()


def test_regions_are_isolated_by_name(plane: ControlPlane) -> None:
    east, west = iot(plane, EAST), iot(plane, WEST)
    created = east.create_thing(thingName="pump-1", attributePayload={"attributes": {"site": "a"}})
    assert created["thingArn"].startswith(f"arn:aws:iot:{EAST}:123456789012:thing/")
    assert west.list_things()["things"] == []
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing(thingName="pump-1")
    other = west.create_thing(thingName="pump-1", attributePayload={"attributes": {"site": "b"}})
    assert other["thingId"] != created["thingId"]
    assert east.describe_thing(thingName="pump-1")["attributes"] == {"site": "a"}
    assert [t["thingName"] for t in east.list_things()["things"]] == ["pump-1"]


def test_registry_events_arrive_once_on_the_right_region_in_aws_format(
    plane: ControlPlane, region_brokers: dict[str, Broker]
) -> None:
    if region_brokers[EAST].kind != "mosquitto":
        pytest.skip("amqtt refuses publishes to topics starting with '$': events need mosquitto")
    east_events = EventSubscriber(region_brokers[EAST], "sub-east")
    west_events = EventSubscriber(region_brokers[WEST], "sub-west")
    east, west = iot(plane, EAST), iot(plane, WEST)
    try:
        east.create_thing_type(
            thingTypeName="sensor", thingTypeProperties={"thingTypeDescription": "s"}
        )
        east.create_thing(
            thingName="t1", thingTypeName="sensor", attributePayload={"attributes": {"m": "1"}}
        )
        east.create_thing(
            thingName="t1", thingTypeName="sensor", attributePayload={"attributes": {"m": "1"}}
        )
        east.update_thing(thingName="t1", attributePayload={"attributes": {"m": "2"}})
        east.create_thing_group(thingGroupName="root")
        east.create_thing_group(thingGroupName="child", parentGroupName="root")
        east.add_thing_to_thing_group(thingGroupName="child", thingName="t1")
        east.add_thing_to_thing_group(thingGroupName="child", thingName="t1")  # no change
        east.update_thing_groups_for_thing(
            thingName="t1", thingGroupsToAdd=["root"], thingGroupsToRemove=["child"]
        )
        east.remove_thing_from_thing_group(thingGroupName="root", thingName="t1")
        east.update_thing(thingName="t1", removeThingType=True)
        east.deprecate_thing_type(thingTypeName="sensor")
        east.update_thing_group(
            thingGroupName="root", thingGroupProperties={"thingGroupDescription": "d"}
        )
        east.delete_thing_group(thingGroupName="child")
        east.delete_thing(thingName="t1")
        east.delete_thing_type(thingTypeName="sensor")
        west.create_thing(thingName="w1")
        east.create_thing(thingName="sentinel")

        seen = east_events.until("$aws/events/thing/sentinel/created")
        assert [topic for topic, _ in seen] == [
            "$aws/events/thingType/sensor/created",
            "$aws/events/thing/t1/created",
            "$aws/events/thingTypeAssociation/thing/t1/thingType/sensor/added",
            "$aws/events/thing/t1/updated",
            "$aws/events/thingGroup/root/created",
            "$aws/events/thingGroup/child/created",
            "$aws/events/thingGroupHierarchy/thingGroup/root/childThingGroup/child/added",
            "$aws/events/thingGroupMembership/thingGroup/child/thing/t1/added",
            "$aws/events/thingGroupMembership/thingGroup/child/thing/t1/removed",
            "$aws/events/thingGroupMembership/thingGroup/root/thing/t1/added",
            "$aws/events/thingGroupMembership/thingGroup/root/thing/t1/removed",
            "$aws/events/thing/t1/updated",
            "$aws/events/thingTypeAssociation/thing/t1/thingType/sensor/removed",
            "$aws/events/thingType/sensor/updated",
            "$aws/events/thingGroup/root/updated",
            "$aws/events/thingGroup/child/deleted",
            "$aws/events/thingGroupHierarchy/thingGroup/root/childThingGroup/child/removed",
            "$aws/events/thing/t1/deleted",
            "$aws/events/thingType/sensor/deleted",
            "$aws/events/thing/sentinel/created",
        ]
        [(_, west_created)] = west_events.until("$aws/events/thing/w1/created")
    finally:
        east_events.close()
        west_events.close()

    payloads = [payload for _, payload in seen]
    assert payloads[-1]["thingId"] == east.describe_thing(thingName="sentinel")["thingId"]
    assert_payloads(payloads)
    assert west_created["thingName"] == "w1"
    assert west_created["thingId"] == west.describe_thing(thingName="w1")["thingId"]
    # The publisher counts a message once paho has sent it, which may be a moment after
    # the subscriber already holds it: wait (bounded) for the count to catch up.
    deadline = time.monotonic() + WAIT_S
    while plane.status()["regions"][EAST]["events"]["published"] < len(payloads):
        assert time.monotonic() < deadline, plane.status()["regions"][EAST]["events"]
        time.sleep(0.05)
    assert plane.status()["regions"][EAST]["events"]["published"] == len(payloads)


def assert_payloads(payloads: list[JsonObject]) -> None:
    """The fields of the events of the sequence above, in AWS's format."""
    created, association, updated = payloads[1], payloads[2], payloads[3]
    assert created["eventType"] == "THING_EVENT"
    assert created["operation"] == "CREATED"
    assert created["accountId"] == "123456789012"
    assert created["versionNumber"] == 1
    assert created["thingTypeName"] == "sensor"
    assert created["attributes"] == {"m": "1"}
    assert isinstance(created["timestamp"], int)
    assert association["eventType"] == "THING_TYPE_ASSOCIATION_EVENT"
    assert association["operation"] == "ADDED"
    assert association["thingId"] == created["thingId"]
    assert updated["versionNumber"] == 2
    assert updated["attributes"] == {"m": "2"}
    assert payloads[11]["versionNumber"] == 3
    assert payloads[11]["thingTypeName"] is None
    hierarchy = payloads[6]
    assert hierarchy["eventType"] == "THING_GROUP_HIERARCHY_EVENT"
    assert hierarchy["thingGroupId"] == payloads[4]["thingGroupId"]
    assert hierarchy["childGroupId"] == payloads[5]["thingGroupId"]
    membership = payloads[7]
    assert membership["eventType"] == "THING_GROUP_MEMBERSHIP_EVENT"
    assert membership["groupId"] == payloads[5]["thingGroupId"]
    assert membership["thingId"] == created["thingId"]
    assert membership["membershipId"] == payloads[8]["membershipId"]
    assert payloads[13]["isDeprecated"] is True
    assert isinstance(payloads[13]["deprecationDate"], int)
    assert payloads[14]["description"] == "d"
    assert payloads[14]["versionNumber"] == 2
    assert len({payload["eventId"] for payload in payloads}) == len(payloads)


def test_update_thing_versions_and_duplicate_creates(plane: ControlPlane) -> None:
    client = iot(plane, EAST)
    first = client.create_thing(thingName="t1", attributePayload={"attributes": {"a": "1"}})
    assert client.describe_thing(thingName="t1")["version"] == 1
    client.update_thing(thingName="t1", attributePayload={"attributes": {"a": "2"}})
    assert client.describe_thing(thingName="t1")["version"] == 2
    with pytest.raises(client.exceptions.VersionConflictException):
        client.update_thing(
            thingName="t1", attributePayload={"attributes": {"a": "3"}}, expectedVersion=1
        )
    assert client.describe_thing(thingName="t1")["attributes"] == {"a": "2"}
    client.update_thing(
        thingName="t1", attributePayload={"attributes": {"a": "3"}}, expectedVersion=2
    )
    assert client.describe_thing(thingName="t1")["version"] == 3
    with pytest.raises(client.exceptions.VersionConflictException):
        client.delete_thing(thingName="t1", expectedVersion=2)

    # The same configuration again returns the existing thing, as AWS does; another is refused.
    again = client.create_thing(thingName="t1", attributePayload={"attributes": {"a": "3"}})
    assert again["thingId"] == first["thingId"]
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        client.create_thing(thingName="t1", attributePayload={"attributes": {"a": "other"}})
    assert client.describe_thing(thingName="t1")["thingId"] == first["thingId"]

    client.delete_thing(thingName="t1", expectedVersion=3)
    client.delete_thing(thingName="t1")  # deleting what is gone succeeds, as in AWS


def test_certificate_ids_are_sha256_of_der(plane: ControlPlane, fleet_pki: FleetFixture) -> None:
    client = iot(plane, EAST)
    device = fleet_pki.pki.issue_device("cert-device")
    registered = client.register_certificate_without_ca(
        certificatePem=device.cert_path.read_text(), status="ACTIVE"
    )
    assert registered["certificateId"] == device.certificate_id

    key = generate_private_key("ec")
    csr = build_csr(key, "csr-device").public_bytes(serialization.Encoding.PEM).decode()
    issued = client.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)
    certificate = x509.load_pem_x509_certificate(issued["certificatePem"].encode())
    assert issued["certificateId"] == certificate_id(certificate)
    assert certificate.public_key() == key.public_key()  # issued for the CSR's own key
    described = client.describe_certificate(certificateId=issued["certificateId"])
    assert described["certificateDescription"]["status"] == "ACTIVE"
    assert described["certificateDescription"]["certificatePem"] == issued["certificatePem"]

    client.update_certificate(certificateId=issued["certificateId"], newStatus="REVOKED")
    with pytest.raises(client.exceptions.CertificateStateException):
        client.update_certificate(certificateId=issued["certificateId"], newStatus="ACTIVE")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.update_certificate(
            certificateId=registered["certificateId"], newStatus="PENDING_TRANSFER"
        )


def test_a_burst_above_the_quota_is_throttled_per_region(bare_plane: ControlPlane) -> None:
    east = iot(bare_plane, EAST)
    outcomes = []
    refusals = []
    for n in range(15):
        try:
            east.create_thing(thingName=f"burst-{n}")
            outcomes.append("ok")
        except botocore.exceptions.ClientError as exc:
            refusals.append(exc.response)
            outcomes.append(error_code(exc))
    assert refusals
    assert {r["ResponseMetadata"]["HTTPStatusCode"] for r in refusals} == {400}
    assert {r["Error"]["Message"] for r in refusals} == {"Rate exceeded"}
    assert outcomes[:5] == ["ok"] * 5  # the burst
    assert "ThrottlingException" in outcomes
    assert set(outcomes) == {"ok", "ThrottlingException"}
    iot(bare_plane, WEST).create_thing(thingName="other-region")  # a bucket of its own
    east.describe_thing(thingName="burst-0")  # and of its own API
    assert bare_plane.status()["throttled"] == outcomes.count("ThrottlingException")


def test_outages_give_boto3_the_errors_of_an_unavailable_region(bare_plane: ControlPlane) -> None:
    east, west = iot(bare_plane, EAST), iot(bare_plane, WEST)
    east.create_thing(thingName="before")

    bare_plane.set_outage(EAST, "http503")
    with pytest.raises(botocore.exceptions.ClientError) as unavailable:
        east.describe_thing(thingName="before")
    assert error_code(unavailable.value) == "ServiceUnavailableException"
    assert unavailable.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert west.list_things()["things"] == []  # the other region still answers

    bare_plane.set_outage(EAST, "drop")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        east.list_things()
    assert bare_plane.status()["regions"][EAST]["control_plane"] == "drop"

    bare_plane.set_outage(EAST, "up")
    assert east.describe_thing(thingName="before")["thingName"] == "before"
    with pytest.raises(ControlPlaneError, match="mode 'sideways'"):
        bare_plane.set_outage(EAST, "sideways")  # type: ignore[arg-type]


def test_calls_succeed_while_the_event_broker_is_unreachable(tmp_path: Path) -> None:
    nowhere = ("127.0.0.2", free_port("127.0.0.2"))
    with start_control_plane(state_dir=tmp_path, brokers={EAST: nowhere}) as started:
        client = iot(started, EAST)
        client.create_thing(thingName="t1")
        client.update_thing(thingName="t1", attributePayload={"attributes": {"a": "1"}})
        events = started.status()["regions"][EAST]["events"]
        assert events["connected"] is False
        assert events["queued"] == 2
        log = started.log_path
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = [line for line in lines if line["event"] == "controlplane.events.broker_unreachable"]
    assert len(warnings) == 1  # logged once, not per retry


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AddressInUseError, match=f"127.0.0.1:{port} is already in use"):
            start_control_plane(state_dir=tmp_path, port=port, brokers={})


def test_a_bad_configuration_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="loopback"):
        start_control_plane(state_dir=tmp_path, host="0.0.0.0", brokers={})
    with pytest.raises(ControlPlaneError, match="CreateThing"):
        start_control_plane(state_dir=tmp_path, brokers={}, quotas={"CreateThing": 0})


def test_stop_ends_the_process_by_pid(tmp_path: Path) -> None:
    started = start_control_plane(state_dir=tmp_path, brokers={})
    pid = started.pid
    assert pid is not None
    assert f"pid={pid}" in repr(started)
    started.stop()
    assert not started.is_running
    assert "stopped" in repr(started)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    started.stop()  # a second stop is harmless


def test_status_reports_regions_and_quotas(plane: ControlPlane) -> None:
    status = plane.status()
    assert status["pid"] == plane.pid
    assert set(status["regions"]) == {EAST, WEST}
    assert status["regions"][EAST]["control_plane"] == "up"
    assert status["quotas"]["CreateThing"] == 100
    assert status["quotas"]["default"] == 10


def test_another_process_controls_the_plane_through_its_url(bare_plane: ControlPlane) -> None:
    admin = ControlPlaneAdmin(bare_plane.url)
    admin.set_outage(WEST, "http503")
    assert bare_plane.status()["regions"][WEST]["control_plane"] == "http503"
    admin.set_outage(WEST, "up")
    assert admin.status()["regions"][WEST]["control_plane"] == "up"
    nowhere = ControlPlaneAdmin(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    with pytest.raises(ControlPlaneError, match="not reachable"):
        nowhere.status()
