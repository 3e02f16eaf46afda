"""Registry events from state before and after a call: topics, AWS payloads, once per change."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from simulators.controlplane import (
    ApiCall,
    GroupRef,
    RegistryEvent,
    RegistryView,
    Subjects,
    ThingGroupState,
    ThingState,
    ThingTypeState,
    registry_events,
    subjects_for,
)

ACCOUNT = "123456789012"
NOW_MS = 1_735_689_600_123
ARN = f"arn:aws:iot:us-east-1:{ACCOUNT}"

# The payload keys AWS documents for each event type (registry-events.html).
AWS_KEYS = {
    "THING_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "accountId", "thingId", "thingName",
        "versionNumber", "thingTypeName", "attributes",
    },
    "THING_TYPE_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "accountId", "thingTypeId",
        "thingTypeName", "isDeprecated", "deprecationDate", "searchableAttributes",
        "propagatingAttributes", "description",
    },
    "THING_TYPE_ASSOCIATION_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "thingId", "thingName", "thingTypeName",
    },
    "THING_GROUP_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "accountId", "thingGroupId",
        "thingGroupName", "versionNumber", "parentGroupName", "parentGroupId", "description",
        "rootToParentThingGroups", "attributes", "dynamicGroupMappingId",
    },
    "THING_GROUP_MEMBERSHIP_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "accountId", "groupArn", "groupId",
        "thingArn", "thingId", "membershipId",
    },
    "THING_GROUP_HIERARCHY_EVENT": {
        "eventType", "eventId", "timestamp", "operation", "accountId", "thingGroupId",
        "thingGroupName", "childGroupId", "childGroupName",
    },
}  # fmt: skip


def thing(
    name: str = "t1", *, version: int = 1, type_name: str | None = None, **attrs: str
) -> ThingState:
    return ThingState(
        name=name,
        thing_id=f"id-{name}",
        arn=f"{ARN}:thing/{name}",
        version=version,
        type_name=type_name,
        attributes=attrs,
    )


def thing_type(name: str = "sensor", **changes: Any) -> ThingTypeState:
    fields: dict[str, Any] = {
        "name": name,
        "type_id": f"tid-{name}",
        "arn": f"{ARN}:thingtype/{name}",
        "description": "A sensor",
        "searchable_attributes": ("model",),
    }
    return ThingTypeState(**(fields | changes))


def group(name: str, *, parent: ThingGroupState | None = None, version: int = 1) -> ThingGroupState:
    ancestors = (*parent.root_to_parent, GroupRef(parent.arn, parent.group_id)) if parent else ()
    return ThingGroupState(
        name=name,
        group_id=f"gid-{name}",
        arn=f"{ARN}:thinggroup/{name}",
        version=version,
        parent_name=parent.name if parent else None,
        parent_id=parent.group_id if parent else None,
        description=f"group {name}",
        attributes={"site": "a"},
        root_to_parent=ancestors,
    )


def events(before: RegistryView, after: RegistryView) -> list[RegistryEvent]:
    counter = itertools.count(1)
    return registry_events(
        before,
        after,
        account_id=ACCOUNT,
        timestamp_ms=NOW_MS,
        new_event_id=lambda: f"e{next(counter)}",
    )


def topics(found: list[RegistryEvent]) -> list[str]:
    return [event.topic for event in found]


# -- which objects a call touches --------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "path", "body", "expected"),
    [
        ("CreateThing", {"thingName": "t1"}, {}, Subjects(things=frozenset({"t1"}))),
        ("UpdateThing", {"thingName": "t1"}, {}, Subjects(things=frozenset({"t1"}))),
        ("DeleteThing", {"thingName": "t1"}, {}, Subjects(things=frozenset({"t1"}))),
        ("CreateThingType", {"thingTypeName": "s"}, {}, Subjects(types=frozenset({"s"}))),
        ("DeprecateThingType", {"thingTypeName": "s"}, {}, Subjects(types=frozenset({"s"}))),
        ("DeleteThingType", {"thingTypeName": "s"}, {}, Subjects(types=frozenset({"s"}))),
        (
            "CreateThingGroup",
            {"thingGroupName": "c"},
            {"parentGroupName": "p"},
            Subjects(groups=frozenset({"c", "p"})),
        ),
        ("DeleteThingGroup", {"thingGroupName": "c"}, {}, Subjects(groups=frozenset({"c"}))),
        (
            "AddThingToThingGroup",
            {},
            {"thingGroupName": "g", "thingName": "t1"},
            Subjects(
                things=frozenset({"t1"}),
                groups=frozenset({"g"}),
                memberships=frozenset({("g", "t1")}),
            ),
        ),
        (
            "RemoveThingFromThingGroup",
            {},
            {"thingGroupArn": f"{ARN}:thinggroup/g", "thingArn": f"{ARN}:thing/t1"},
            Subjects(
                things=frozenset({"t1"}),
                groups=frozenset({"g"}),
                memberships=frozenset({("g", "t1")}),
            ),
        ),
        (
            "UpdateThingGroupsForThing",
            {},
            {"thingName": "t1", "thingGroupsToAdd": ["a"], "thingGroupsToRemove": ["b"]},
            Subjects(
                things=frozenset({"t1"}),
                groups=frozenset({"a", "b"}),
                memberships=frozenset({("a", "t1"), ("b", "t1")}),
            ),
        ),
    ],
)
def test_subjects_of_a_call(
    api: str, path: dict[str, str], body: dict[str, Any], expected: Subjects
) -> None:
    assert subjects_for(ApiCall(region="us-east-1", api=api, path=path, body=body)) == expected


@pytest.mark.parametrize("api", ["DescribeThing", "ListThings", "AttachPolicy", "CreatePolicy"])
def test_calls_without_registry_events_have_no_subjects(api: str) -> None:
    assert subjects_for(ApiCall(region="us-east-1", api=api)) is None


# -- things -----------------------------------------------------------------------------------


def test_thing_created_with_a_type_publishes_created_and_association_added() -> None:
    created = thing(type_name="sensor", model="m1")
    found = events(RegistryView(things={"t1": None}), RegistryView(things={"t1": created}))
    assert topics(found) == [
        "$aws/events/thing/t1/created",
        "$aws/events/thingTypeAssociation/thing/t1/thingType/sensor/added",
    ]
    assert found[0].payload == {
        "eventType": "THING_EVENT",
        "eventId": "e1",
        "timestamp": NOW_MS,
        "operation": "CREATED",
        "accountId": ACCOUNT,
        "thingId": "id-t1",
        "thingName": "t1",
        "versionNumber": 1,
        "thingTypeName": "sensor",
        "attributes": {"model": "m1"},
    }
    assert found[1].payload == {
        "eventType": "THING_TYPE_ASSOCIATION_EVENT",
        "eventId": "e2",
        "timestamp": NOW_MS,
        "operation": "ADDED",
        "thingId": "id-t1",
        "thingName": "t1",
        "thingTypeName": "sensor",
    }


def test_thing_without_a_type_has_a_null_type_and_no_association() -> None:
    found = events(RegistryView(things={"t1": None}), RegistryView(things={"t1": thing()}))
    assert topics(found) == ["$aws/events/thing/t1/created"]
    assert found[0].payload["thingTypeName"] is None


def test_nothing_changed_publishes_nothing() -> None:
    view = RegistryView(
        things={"t1": thing(type_name="sensor")},
        groups={"g": group("g")},
        memberships=frozenset({("g", "t1")}),
    )
    assert events(view, view) == []


def test_update_publishes_the_new_state_and_version() -> None:
    before = RegistryView(things={"t1": thing(model="m1")})
    after = RegistryView(things={"t1": thing(version=2, model="m2")})
    [event] = events(before, after)
    assert event.topic == "$aws/events/thing/t1/updated"
    assert event.payload["operation"] == "UPDATED"
    assert event.payload["versionNumber"] == 2
    assert event.payload["attributes"] == {"model": "m2"}


def test_changing_the_type_removes_the_old_association_and_adds_the_new() -> None:
    before = RegistryView(things={"t1": thing(type_name="old")})
    after = RegistryView(things={"t1": thing(version=2, type_name="new")})
    found = events(before, after)
    assert topics(found) == [
        "$aws/events/thing/t1/updated",
        "$aws/events/thingTypeAssociation/thing/t1/thingType/old/removed",
        "$aws/events/thingTypeAssociation/thing/t1/thingType/new/added",
    ]
    assert found[1].payload["operation"] == "REMOVED"
    assert found[1].payload["thingTypeName"] == "old"


def test_removing_the_type_publishes_removed() -> None:
    before = RegistryView(things={"t1": thing(type_name="sensor")})
    after = RegistryView(things={"t1": thing(version=2)})
    assert topics(events(before, after)) == [
        "$aws/events/thing/t1/updated",
        "$aws/events/thingTypeAssociation/thing/t1/thingType/sensor/removed",
    ]


def test_deleted_thing_publishes_its_last_state_and_no_association_event() -> None:
    last = thing(version=3, type_name="sensor", model="m1")
    [event] = events(RegistryView(things={"t1": last}), RegistryView(things={"t1": None}))
    assert event.topic == "$aws/events/thing/t1/deleted"
    assert event.payload["operation"] == "DELETED"
    assert event.payload["versionNumber"] == 3
    assert event.payload["thingTypeName"] == "sensor"


# -- thing types ------------------------------------------------------------------------------


def test_thing_type_lifecycle() -> None:
    created = thing_type()
    deprecated = thing_type(deprecated=True, deprecation_date_ms=NOW_MS - 5)
    [create] = events(RegistryView(types={"sensor": None}), RegistryView(types={"sensor": created}))
    assert create.topic == "$aws/events/thingType/sensor/created"
    assert create.payload == {
        "eventType": "THING_TYPE_EVENT",
        "eventId": "e1",
        "timestamp": NOW_MS,
        "operation": "CREATED",
        "accountId": ACCOUNT,
        "thingTypeId": "tid-sensor",
        "thingTypeName": "sensor",
        "isDeprecated": False,
        "deprecationDate": None,
        "searchableAttributes": ["model"],
        "propagatingAttributes": [],
        "description": "A sensor",
    }
    [deprecate] = events(
        RegistryView(types={"sensor": created}), RegistryView(types={"sensor": deprecated})
    )
    assert deprecate.topic == "$aws/events/thingType/sensor/updated"  # deprecation is an update
    assert deprecate.payload["isDeprecated"] is True
    assert deprecate.payload["deprecationDate"] == NOW_MS - 5
    [undo] = events(
        RegistryView(types={"sensor": deprecated}), RegistryView(types={"sensor": created})
    )
    assert undo.topic == "$aws/events/thingType/sensor/updated"
    assert undo.payload["isDeprecated"] is False
    [delete] = events(
        RegistryView(types={"sensor": deprecated}), RegistryView(types={"sensor": None})
    )
    assert delete.topic == "$aws/events/thingType/sensor/deleted"


# -- thing groups, hierarchy, membership ------------------------------------------------------


def test_child_group_created_under_a_parent_publishes_created_and_hierarchy_added() -> None:
    root = group("root")
    child = group("child", parent=root)
    before = RegistryView(groups={"child": None, "root": root})
    after = RegistryView(groups={"child": child, "root": root})
    found = events(before, after)
    assert topics(found) == [
        "$aws/events/thingGroup/child/created",
        "$aws/events/thingGroupHierarchy/thingGroup/root/childThingGroup/child/added",
    ]
    assert found[0].payload == {
        "eventType": "THING_GROUP_EVENT",
        "eventId": "e1",
        "timestamp": NOW_MS,
        "operation": "CREATED",
        "accountId": ACCOUNT,
        "thingGroupId": "gid-child",
        "thingGroupName": "child",
        "versionNumber": 1,
        "parentGroupName": "root",
        "parentGroupId": "gid-root",
        "description": "group child",
        "rootToParentThingGroups": [{"groupArn": f"{ARN}:thinggroup/root", "groupId": "gid-root"}],
        "attributes": {"site": "a"},
        "dynamicGroupMappingId": None,
    }
    assert found[1].payload == {
        "eventType": "THING_GROUP_HIERARCHY_EVENT",
        "eventId": "e2",
        "timestamp": NOW_MS,
        "operation": "ADDED",
        "accountId": ACCOUNT,
        "thingGroupId": "gid-root",
        "thingGroupName": "root",
        "childGroupId": "gid-child",
        "childGroupName": "child",
    }


def test_root_to_parent_lists_every_ancestor_from_the_root() -> None:
    top = group("top")
    middle = group("middle", parent=top)
    leaf = group("leaf", parent=middle)
    [created, _] = events(RegistryView(groups={"leaf": None}), RegistryView(groups={"leaf": leaf}))
    assert [g["groupId"] for g in created.payload["rootToParentThingGroups"]] == [
        "gid-top",
        "gid-middle",
    ]


def test_top_level_group_has_null_parent_and_no_hierarchy_event() -> None:
    [created] = events(RegistryView(groups={"g": None}), RegistryView(groups={"g": group("g")}))
    assert created.payload["parentGroupName"] is None
    assert created.payload["parentGroupId"] is None
    assert created.payload["rootToParentThingGroups"] == []


def test_deleting_a_child_group_publishes_deleted_and_hierarchy_removed() -> None:
    child = group("child", parent=group("root"))
    found = events(RegistryView(groups={"child": child}), RegistryView(groups={"child": None}))
    assert topics(found) == [
        "$aws/events/thingGroup/child/deleted",
        "$aws/events/thingGroupHierarchy/thingGroup/root/childThingGroup/child/removed",
    ]


def test_group_update_publishes_the_new_version() -> None:
    [event] = events(
        RegistryView(groups={"g": group("g")}), RegistryView(groups={"g": group("g", version=2)})
    )
    assert event.topic == "$aws/events/thingGroup/g/updated"
    assert event.payload["versionNumber"] == 2


def test_membership_added_and_removed_carry_the_same_membership_id() -> None:
    state = {"t1": thing()}
    groups = {"g": group("g")}
    out = RegistryView(things=state, groups=groups)
    inside = RegistryView(things=state, groups=groups, memberships=frozenset({("g", "t1")}))
    [added] = events(out, inside)
    [removed] = events(inside, out)
    assert added.topic == "$aws/events/thingGroupMembership/thingGroup/g/thing/t1/added"
    assert removed.topic == "$aws/events/thingGroupMembership/thingGroup/g/thing/t1/removed"
    assert added.payload == {
        "eventType": "THING_GROUP_MEMBERSHIP_EVENT",
        "eventId": "e1",
        "timestamp": NOW_MS,
        "operation": "ADDED",
        "accountId": ACCOUNT,
        "groupArn": f"{ARN}:thinggroup/g",
        "groupId": "gid-g",
        "thingArn": f"{ARN}:thing/t1",
        "thingId": "id-t1",
        "membershipId": added.payload["membershipId"],
    }
    assert removed.payload["operation"] == "REMOVED"
    assert removed.payload["membershipId"] == added.payload["membershipId"]
    elsewhere = {"h": group("h")}
    other = events(
        RegistryView(things=state, groups=elsewhere),
        RegistryView(things=state, groups=elsewhere, memberships=frozenset({("h", "t1")})),
    )
    assert other[0].payload["membershipId"] != added.payload["membershipId"]


def test_moving_a_thing_between_groups_publishes_one_removed_and_one_added() -> None:
    state = {"t1": thing()}
    groups = {"a": group("a"), "b": group("b")}
    before = RegistryView(things=state, groups=groups, memberships=frozenset({("b", "t1")}))
    after = RegistryView(things=state, groups=groups, memberships=frozenset({("a", "t1")}))
    assert topics(events(before, after)) == [
        "$aws/events/thingGroupMembership/thingGroup/a/thing/t1/added",
        "$aws/events/thingGroupMembership/thingGroup/b/thing/t1/removed",
    ]


# -- every payload ----------------------------------------------------------------------------


def test_every_event_has_exactly_the_keys_aws_documents() -> None:
    root, child = group("root"), group("child", parent=group("root"))
    before = RegistryView(
        things={"t1": None, "t2": thing("t2", type_name="x")},
        types={"sensor": None},
        groups={"root": root, "child": None},
    )
    after = RegistryView(
        things={"t1": thing(type_name="sensor"), "t2": None},
        types={"sensor": thing_type()},
        groups={"root": root, "child": child},
        memberships=frozenset({("root", "t1")}),
    )
    found = events(before, after)
    kinds = {event.payload["eventType"] for event in found}
    assert kinds == set(AWS_KEYS)
    for event in found:
        assert set(event.payload) == AWS_KEYS[event.payload["eventType"]], event.topic
        assert json.loads(event.payload_bytes()) == event.payload
    assert len({event.payload["eventId"] for event in found}) == len(found)


def test_event_ids_are_unique_hex_by_default() -> None:
    found = registry_events(
        RegistryView(things={"a": None, "b": None}),
        RegistryView(things={"a": thing("a"), "b": thing("b")}),
        account_id=ACCOUNT,
        timestamp_ms=NOW_MS,
    )
    ids = [event.payload["eventId"] for event in found]
    assert len(set(ids)) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
