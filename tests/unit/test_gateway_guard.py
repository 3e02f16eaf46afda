"""The door's checks after admission, and its registry of policies: driven directly, no I/O."""

# ruff: noqa: E501 - packets and records read best on one line

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.gateway import (
    AuthorizerCache,
    CertificateRecord,
    RegistryView,
    SessionGuard,
    changes_from_json,
    compile_policies,
    parse_policy,
    snapshot_from_json,
)
from simulators.gateway._policy import ConnectionContext
from tests.mqtt_bytes import packet, publish, string, subscribe

PREFIX = "arn:aws:iot:us-east-1:123456789012:"


def rules(*statements: dict[str, Any], client_id: str = "dev") -> Any:
    document = parse_policy({"Statement": list(statements)})
    return compile_policies([document], ConnectionContext(client_id=client_id))


def allow(actions: str | list[str], resource: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": f"{PREFIX}{resource}"}


OPEN = rules(allow("iot:*", "*"))
ONLY_OWN = rules(
    allow("iot:Publish", "topic/own/*"),
    allow("iot:Receive", "topic/own/*"),
    allow("iot:Subscribe", "topicfilter/own/*"),
)


def guard(authorizer: Any = ONLY_OWN, level: int = 4) -> SessionGuard:
    made = SessionGuard.of(authorizer, protocol_level=level, arn_prefix=PREFIX)
    assert made is not None
    return made


def test_policies_that_allow_everything_need_no_guard() -> None:
    assert SessionGuard.of(OPEN, protocol_level=4, arn_prefix=PREFIX) is None
    assert SessionGuard.needs(OPEN, PREFIX) == (False, False)
    assert SessionGuard.needs(ONLY_OWN, PREFIX) == (True, True)
    receive_only = rules(
        allow(["iot:Publish", "iot:Subscribe"], "*"), allow("iot:Receive", "topic/a")
    )
    assert SessionGuard.needs(receive_only, PREFIX) == (False, True)
    publish_only = rules(
        allow(["iot:Receive", "iot:Subscribe"], "*"), allow("iot:Publish", "topic/a")
    )
    assert SessionGuard.needs(publish_only, PREFIX) == (True, False)
    unframed = SessionGuard.of(publish_only, protocol_level=4, arn_prefix=PREFIX)
    assert unframed is not None
    assert unframed.from_broker(b"\x30\xff").forward == b"\x30\xff"  # not even read
    assert repr(unframed) == "SessionGuard(level=4, device=True, broker=False, pending_subacks=0)"


def test_allowed_packets_pass_unchanged_even_split_anywhere() -> None:
    stream = publish("own/1") + b"\xc0\x00" + subscribe(2, "own/#") + publish("own/2", qos=0)
    for cut in range(len(stream) + 1):
        checks = guard()
        first, second = checks.from_device(stream[:cut]), checks.from_device(stream[cut:])
        assert first.forward + second.forward == stream
        assert first.denied == second.denied == []
        assert first.answer == second.answer == b""
        assert first.close is second.close is None


def test_mqtt311_publish_denied_closes_after_what_came_before() -> None:
    passage = guard().from_device(publish("own/1") + publish("other/1") + publish("own/2"))
    assert passage.forward == publish("own/1")
    assert passage.denied == ["policy_publish_denied"]
    assert passage.close == "policy_publish_denied"
    assert passage.answer == b""


@pytest.mark.parametrize(
    ("qos", "answer"), [(0, b""), (1, b"\x40\x03\x00\x09\x87"), (2, b"\x50\x03\x00\x09\x87")]
)
def test_mqtt5_publish_denied_is_answered_and_the_connection_stays(qos: int, answer: bytes) -> None:
    denied = publish("other/1", qos=qos, packet_id=9, level=5)
    passage = guard(level=5).from_device(denied + publish("own/1", level=5))
    assert passage.forward == publish("own/1", level=5)
    assert passage.answer == answer
    assert passage.denied == ["policy_publish_denied"]
    assert passage.close is None


def test_mqtt5_topic_aliases_are_resolved_per_direction() -> None:
    checks = guard(level=5)
    alias = b"\x23\x00\x05"
    named = publish("own/1", level=5, props=alias)
    by_alias = publish("", level=5, props=alias)
    assert checks.from_device(named + by_alias).forward == named + by_alias
    other = publish("other/1", level=5, props=alias, packet_id=2)
    passage = checks.from_device(other + by_alias)
    assert passage.denied == ["policy_publish_denied"] * 2  # the alias now names other/1
    # An alias the client never set: malformed. Properties of every size are read through.
    props = b"\x01\x01" + b"\x02\x00\x00\x00\x01" + b"\x0b\x05" + b"\x26" + string("k") + string("v") + b"\x08" + string("r")  # fmt: skip
    assert checks.from_device(publish("own/2", level=5, props=props)).forward
    assert (
        guard(level=5).from_device(publish("", level=5, props=b"\x23\x00\x07")).close == "malformed"
    )
    assert guard(level=5).from_device(publish("own/3", level=5, props=b"\x7f")).close == "malformed"


def test_a_subscribe_with_every_filter_denied_is_answered_by_the_door() -> None:
    for level, properties in ((4, b""), (5, b"\x00")):
        passage = guard(level=level).from_device(subscribe(3, "a/#", "b", level=level))
        assert passage.forward == b""
        assert passage.answer == packet(0x90, b"\x00\x03" + properties + b"\x80\x80")
        assert passage.denied == ["policy_subscribe_denied"] * 2


@pytest.mark.parametrize("level", [4, 5])
def test_a_partly_denied_subscribe_reaches_the_broker_narrowed_and_its_suback_widened(
    level: int,
) -> None:
    checks = guard(level=level)
    properties = b"\x00" if level == 5 else b""
    passage = checks.from_device(subscribe(4, "x", "own/#", "y", "own/+/z", level=level))
    assert passage.forward == subscribe(4, "own/#", "own/+/z", level=level)
    assert passage.denied == ["policy_subscribe_denied"] * 2
    suback = packet(0x90, b"\x00\x04" + properties + b"\x01\x00")
    unrelated = packet(0x90, b"\x00\x05" + properties + b"\x01")
    back = checks.from_broker(suback + unrelated)
    widened = packet(0x90, b"\x00\x04" + properties + b"\x80\x01\x80\x00")
    assert back.forward == widened + unrelated
    assert checks.from_broker(suback).forward == suback  # only once


def test_a_message_the_device_may_not_receive_is_acked_to_the_broker_and_dropped() -> None:
    checks = guard()
    passage = checks.from_broker(publish("other/1", packet_id=7) + publish("own/1", packet_id=8))
    assert passage.forward == publish("own/1", packet_id=8)
    assert passage.answer == b"\x40\x02\x00\x07"
    assert passage.denied == ["policy_receive_denied"]
    qos2 = checks.from_broker(publish("other/2", qos=2, packet_id=9))
    assert qos2.answer == b"\x50\x02\x00\x09"
    assert checks.from_broker(publish("other/3", qos=0)).answer == b""


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x30\xff\xff\xff\xff\x01",  # a remaining length of five bytes
        b"\x30\xff\xff\x7f",  # larger than any message AWS takes
        packet(0x32, b"\x00\x02\xc3\x28\x00\x01"),  # a topic that is not UTF-8
        packet(0x32, b"\x00\x09own"),  # a topic longer than its packet
        packet(0x36, string("own/1") + b"\x00\x01"),  # QoS 3
        packet(0x30, b"\x00\x00"),  # no topic and no alias
        packet(0x82, b"\x00\x01"),  # a SUBSCRIBE without filters
        packet(0x82, b"\x00\x01\x00\x05own"),  # a filter cut short
    ],
)
def test_what_cannot_be_read_closes_the_connection(garbage: bytes) -> None:
    passage = guard().from_device(garbage + b"\x00" * 16)
    assert passage.close == "malformed"


@given(st.binary(max_size=300))
def test_no_input_makes_the_guard_raise(data: bytes) -> None:
    for level in (4, 5):
        checks = guard(level=level)
        checks.from_device(data)
        checks.from_broker(data)


# -- the policies' registry and the cache ---------------------------------------------------------

DOCUMENT = json.dumps({"Statement": [allow("iot:Connect", "client/${iot:Connection.Thing.ThingName}")]})  # fmt: skip


def view() -> RegistryView:
    found = RegistryView("us-east-1")
    found.load(
        snapshot_from_json(
            {
                "epoch": "e",
                "revision": 1,
                "accountId": "123456789012",
                "certificates": [
                    {
                        "certificateId": "c1",
                        "status": "ACTIVE",
                        "things": ["dev"],
                        "policies": ["own"],
                    }
                ],
                "things": [
                    {
                        "thingName": "dev",
                        "thingTypeName": "pump",
                        "attributes": {"a": "1"},
                        "thingGroups": ["floor"],
                    }
                ],
                "thingGroups": [
                    {"thingGroupName": "floor", "parentGroupName": "site", "policies": ["floor"]},
                    {
                        "thingGroupName": "site",
                        "parentGroupName": None,
                        "policies": ["site", "floor"],
                    },
                ],
                "policies": [
                    {"policyName": n, "defaultVersionId": "1", "policyDocument": DOCUMENT}
                    for n in ("own", "floor", "site", "unused")
                ],
            }
        )
    )
    return found


def test_a_certificates_policies_include_its_things_groups_and_their_ancestors() -> None:
    registry = view()
    record = registry.certificate("c1")
    assert record is not None
    thing = registry.thing_for(record, "dev")
    assert thing is not None
    assert (thing.type_name, thing.attributes, thing.groups) == (
        "pump",
        (("a", "1"),),
        frozenset({"floor"}),
    )
    assert [p.name for p in registry.policies_for(record, thing)] == ["floor", "own", "site"]
    assert [p.name for p in registry.policies_for(record, None)] == ["own"]
    assert registry.thing_for(record, "other") is None
    assert registry.arn("client", "dev") == f"{PREFIX}client/dev"


def test_a_malformed_policy_is_kept_with_its_error_and_reported_once() -> None:
    registry = view()
    bad = {"policyName": "own", "defaultVersionId": "2", "policyDocument": "{not json"}
    applied = registry.apply(changes_from_json({"epoch": "e", "revision": 2, "policies": [bad]}))
    assert applied.authorization
    assert [p.name for p in applied.malformed_policies] == ["own"]
    found = registry.policy("own")
    assert found is not None
    assert found.document is None
    assert found.error is not None
    assert "not JSON" in found.error
    again = registry.apply(changes_from_json({"epoch": "e", "revision": 3, "policies": [bad]}))
    assert again.malformed_policies == ()
    removed = registry.apply(
        changes_from_json({"epoch": "e", "revision": 4, "removedPolicies": ["own"]})
    )
    assert removed.authorization
    assert registry.policy("own") is None
    quiet = registry.apply(changes_from_json({"epoch": "e", "revision": 5}))
    assert not quiet.authorization


def test_the_cache_binds_once_per_certificate_client_and_versions() -> None:
    registry = view()
    cache = AuthorizerCache(capacity=2)
    record = registry.certificate("c1")
    assert record is not None
    first = cache.get(registry, record, "dev", None)
    assert cache.get(registry, record, "dev", None) is first
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    newer = {"policyName": "site", "defaultVersionId": "2", "policyDocument": DOCUMENT}
    registry.apply(changes_from_json({"epoch": "e", "revision": 2, "policies": [newer]}))
    assert cache.get(registry, record, "dev", None) is not first
    cache.get(registry, record, "other", None)
    assert len(cache) == 2  # the oldest made room
    assert repr(cache) == "AuthorizerCache(entries=2, hits=1, misses=3)"
    with pytest.raises(ValueError, match="at least one entry"):
        AuthorizerCache(capacity=0)


def test_a_certificate_without_policies_may_do_nothing() -> None:
    registry = view()
    bare = CertificateRecord("c2", "ACTIVE", frozenset())  # no thing: no group's policies
    authorizer = AuthorizerCache().get(registry, bare, "dev", None)
    assert not authorizer.check("iot:Connect", registry.arn("client", "dev")).allowed
