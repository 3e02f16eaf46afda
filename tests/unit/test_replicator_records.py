"""Change records: every topic of the feed, malformed input, echoes, SQS bodies, round trips."""

from __future__ import annotations

import json

import pytest

from replicator.core._record_json import record_from_json, record_to_json
from replicator.core._records import (
    CertificateChanged,
    DeadLetter,
    HierarchyChanged,
    Ignored,
    MembershipChanged,
    ObjectNamed,
    ParseResult,
    ShadowChanged,
    ThingChanged,
    ThingGroupChanged,
    ThingTypeChanged,
    origin_token,
    parse_message,
    parse_sqs_body,
)
from replicator.core._state import ObjectKey

EAST = "us-east-1"
CERT = "ab" * 32


def parse(topic: str, payload: object) -> ParseResult:
    data = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    return parse_message(topic, data, region=EAST)


def test_thing_events() -> None:
    got = parse(
        "$aws/events/thing/pump-1/updated",
        {"eventId": "e1", "timestamp": 1700, "operation": "UPDATED", "versionNumber": 3},
    )
    assert got == ThingChanged(
        region=EAST,
        event_id="e1",
        timestamp_ms=1700,
        thing_name="pump-1",
        operation="UPDATED",
        version=3,
    )
    assert isinstance(got, ThingChanged)
    assert got.object_keys() == (ObjectKey.thing("pump-1"),)


@pytest.mark.parametrize(
    ("topic", "payload", "expected_key"),
    [
        ("$aws/events/thingType/sensor/deleted", {"operation": "DELETED"}, "thingType/sensor"),
        ("$aws/events/thingGroup/root/created", {"operation": "CREATED"}, "thingGroup/root"),
        (
            "$aws/events/thingTypeAssociation/thing/t1/thingType/sensor/removed",
            {"operation": "REMOVED"},
            "thing/t1",
        ),
        (
            "$aws/events/thingGroupMembership/thingGroup/g/thing/t1/added",
            {"operation": "ADDED", "groupArn": "x", "membershipId": "m"},
            "thing/t1",
        ),
        (
            "$aws/events/thingGroupHierarchy/thingGroup/root/childThingGroup/child/added",
            {"operation": "ADDED"},
            "thingGroup/child",
        ),
        (
            "$aws/events/certificates/registered/" + "cd" * 32,
            {"certificateId": CERT},
            f"certificate/{CERT}",
        ),
        ("$aws/things/t1/shadow/update/documents", {"current": {"version": 4}}, "shadow/t1"),
        (
            "$aws/things/t1/shadow/name/cfg/update/documents",
            {"current": {"version": 1}},
            "shadow/t1/cfg",
        ),
        ("$aws/things/t1/shadow/delete/accepted", {"version": 4}, "shadow/t1"),
        ("$aws/things/t1/shadow/name/$ota/delete/accepted", {"version": 2}, "shadow/t1/$ota"),
        ("iotdr/replicate", {"kind": "policy", "name": "fleet"}, "policy/fleet"),
    ],
)
def test_each_kind_names_its_object(topic: str, payload: object, expected_key: str) -> None:
    got = parse(topic, payload)
    assert not isinstance(got, DeadLetter | Ignored), got
    assert [str(k) for k in got.object_keys()] == [expected_key]


def test_record_types() -> None:
    assert isinstance(parse("$aws/events/thingType/s/updated", {}), ThingTypeChanged)
    assert isinstance(parse("$aws/events/thingGroup/g/deleted", {}), ThingGroupChanged)
    membership = parse("$aws/events/thingGroupMembership/thingGroup/g/thing/t/removed", {})
    assert isinstance(membership, MembershipChanged)
    assert (membership.group_name, membership.operation) == ("g", "REMOVED")
    hierarchy = parse("$aws/events/thingGroupHierarchy/thingGroup/p/childThingGroup/c/removed", {})
    assert isinstance(hierarchy, HierarchyChanged)
    assert (hierarchy.parent_name, hierarchy.child_name) == ("p", "c")
    cert = parse("$aws/events/certificates/registered/" + "cd" * 32, {"certificateId": CERT})
    assert isinstance(cert, CertificateChanged)
    assert cert.ca_certificate_id == "cd" * 32


def test_shadow_messages() -> None:
    named = parse(
        "$aws/things/t1/shadow/name/cfg/update/documents",
        {"previous": None, "current": {"version": 7}, "timestamp": 12, "clientToken": "dev-1"},
    )
    assert named == ShadowChanged(
        region=EAST,
        thing_name="t1",
        shadow_name="cfg",
        version=7,
        client_token="dev-1",
        timestamp_ms=12000,
    )
    deleted = parse("$aws/things/t1/shadow/delete/accepted", {"version": 3, "timestamp": 1})
    assert isinstance(deleted, ShadowChanged)
    assert deleted.deleted
    assert deleted.shadow_name is None


def test_our_own_shadow_writes_are_ignored_so_nothing_ping_pongs() -> None:
    token = origin_token("us-west-2")
    echo = parse(
        "$aws/things/t1/shadow/update/documents", {"current": {"version": 2}, "clientToken": token}
    )
    assert isinstance(echo, Ignored)
    assert "our own write" in echo.reason
    assert len(origin_token("x" * 100).encode()) <= 64


def test_presence_and_other_shadow_topics_are_ignored() -> None:
    assert isinstance(parse("$aws/events/presence/connected/c1", {}), Ignored)
    assert isinstance(parse("$aws/things/t1/shadow/update/accepted", {}), Ignored)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("$aws/events/thing/t1/created", b"{not json", "not JSON"),
        ("$aws/events/thing/t1/created", b"[1, 2]", "not a JSON object"),
        ("$aws/events/thing/t1/created", {"operation": "DELETED"}, "does not match"),
        ("$aws/events/thing/t1/exploded", {}, "is not one of"),
        ("$aws/events/thing/t1/created", {"versionNumber": "3"}, "not an integer"),
        ("$aws/events/thing/bad name!/created", {}, "not a valid name"),
        ("$aws/events/billingGroup/b/created", {}, "unknown registry event kind"),
        ("$aws/events/certificates/registered/" + "cd" * 32, {}, "certificateId"),
        ("$aws/things/t1/shadow/update/documents", {"previous": {}}, "without a 'current'"),
        ("$aws/things/t1/shadow/update/documents", b"\xff\xfe", "not JSON"),
        ("iotdr/replicate", {"kind": "billingGroup", "name": "b"}, "kind"),
        ("iotdr/replicate", {"kind": "thing", "name": "a/b"}, "contains '/'"),
        ("some/other/topic", {}, "not a topic of the change feed"),
    ],
)
def test_malformed_messages_become_dead_letters_with_the_reason(
    topic: str, payload: object, reason: str
) -> None:
    got = parse(topic, payload)
    assert isinstance(got, DeadLetter), got
    assert reason in got.reason
    assert got.topic == topic


def test_sqs_bodies_carry_the_same_payloads() -> None:
    body = json.dumps(
        {"topic": "$aws/events/thing/t1/deleted", "payload": {"operation": "DELETED"}}
    )
    got = parse_sqs_body(body, region=EAST)
    assert isinstance(got, ThingChanged)
    assert got.operation == "DELETED"
    as_string = json.dumps({"topic": "$aws/events/thing/t1/created", "payload": "{}"})
    assert isinstance(parse_sqs_body(as_string, region=EAST), ThingChanged)
    for bad in ("nope", json.dumps({"payload": {}}), json.dumps({"topic": "x", "payload": 3})):
        assert isinstance(parse_sqs_body(bad, region=EAST), DeadLetter)


def test_records_round_trip_through_json() -> None:
    records = [
        parse("$aws/events/thing/t1/created", {"eventId": "e", "versionNumber": 1}),
        parse("$aws/things/t1/shadow/name/cfg/update/documents", {"current": {"version": 2}}),
        ObjectNamed(region=EAST, key=ObjectKey.for_shadow("t1", "cfg")),
    ]
    for record in records:
        assert not isinstance(record, DeadLetter | Ignored)
        assert record_from_json(record_to_json(record)) == record
    with pytest.raises(ValueError, match="not a change record"):
        record_from_json('{"type": "Nope"}')


def test_object_keys_round_trip_and_refuse_bad_names() -> None:
    for key in (ObjectKey.thing("t"), ObjectKey.for_shadow("t"), ObjectKey.for_shadow("t", "$ota")):
        assert ObjectKey.parse(str(key)) == key
    with pytest.raises(ValueError, match="contains '/'"):
        ObjectKey.thing("a/b")
    with pytest.raises(ValueError, match="unknown object kind"):
        ObjectKey("billingGroup", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an object key"):
        ObjectKey.parse("thing")
