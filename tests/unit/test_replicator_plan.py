"""The pure planners: the minimal writes for each kind, and the rules they honour."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from replicator._errors import PolicyDocumentError
from replicator.core._arns import ArnScope, rewrite_policy_document
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
    Conflict,
    CreatePolicy,
    CreatePolicyVersion,
    CreateThing,
    CreateThingGroup,
    CreateThingType,
    DeleteCertificate,
    DeletePolicy,
    DeletePolicyVersion,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingShadow,
    DeleteThingType,
    DeprecateThingType,
    DetachPolicy,
    DetachThingPrincipal,
    RegisterCertificateWithoutCA,
    RemoveThingFromThingGroup,
    ScheduleAt,
    SetDefaultPolicyVersion,
    UpdateCertificate,
    UpdateThing,
    UpdateThingGroup,
    UpdateThingShadow,
)
from replicator.core._plan import plan_thing, plan_thing_group, plan_thing_type
from replicator.core._plan_security import plan_certificate, plan_policy
from replicator.core._plan_shadow import ShadowSync, plan_shadow, state_patch
from replicator.core._state import (
    CertificateState,
    ObjectKey,
    PolicyState,
    PolicyVersion,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)

EAST = ArnScope("us-east-1", "111111111111")
WEST = ArnScope("us-west-2", "222222222222")
C1, C2 = "a" * 64, "b" * 64


def thing(**kwargs: object) -> ThingState:
    base: dict[str, object] = {"name": "t1", "principals": frozenset(), "groups": frozenset()}
    return ThingState(**{**base, **kwargs})  # type: ignore[arg-type]


# -- purity --------------------------------------------------------------------------------

PURE_MODULES = [
    "core/_plan.py",
    "core/_plan_security.py",
    "core/_plan_shadow.py",
    "core/_arns.py",
    "core/_ops.py",
    "core/_state.py",
    "core/_records.py",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "random",
    "logging",
    "boto3",
    "botocore",
    "sqlite3",
    "threading",
    "paho",
}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_the_planners_import_no_io(module: str) -> None:
    source = Path(__file__).resolve().parents[2] / "replicator" / module
    tree = ast.parse(source.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


# -- things --------------------------------------------------------------------------------


def test_thing_created_with_type_certificate_and_group() -> None:
    source = thing(
        type_name="sensor",
        attributes={"a": "1"},
        principals=frozenset({C1}),
        groups=frozenset({"g"}),
    )
    plan = plan_thing("t1", source, None, mode="complete")
    assert plan.ops == (
        CreateThing("t1", "sensor", {"a": "1"}),
        AttachThingPrincipal("t1", C1),
        AddThingToThingGroup("g", "t1"),
    )
    assert set(plan.requires) == {
        ObjectKey.thing_type("sensor"),
        ObjectKey.certificate(C1),
        ObjectKey.thing_group("g"),
    }


def test_equal_things_need_nothing() -> None:
    same = thing(type_name="s", attributes={"a": "1"}, principals=frozenset({C1}))
    assert plan_thing("t1", same, same, mode="complete").in_sync


def test_attributes_merged_replaced_and_removed_in_one_minimal_update() -> None:
    source = thing(attributes={"keep": "1", "changed": "new", "added": "x"})
    target = thing(attributes={"keep": "1", "changed": "old", "removed": "y"})
    plan = plan_thing("t1", source, target, mode="complete")
    assert plan.ops == (UpdateThing("t1", {"changed": "new", "added": "x", "removed": ""}),)


def test_thing_type_set_and_removed() -> None:
    set_type = plan_thing("t1", thing(type_name="s"), thing(), mode="jitr")
    assert set_type.ops == (UpdateThing("t1", {}, type_name="s"),)
    assert set_type.requires == (ObjectKey.thing_type("s"),)
    removed = plan_thing("t1", thing(), thing(type_name="s"), mode="jitr")
    assert removed.ops == (UpdateThing("t1", {}, remove_type=True),)


def test_certificate_rotation_attaches_the_new_and_detaches_the_old() -> None:
    plan = plan_thing(
        "t1", thing(principals=frozenset({C2})), thing(principals=frozenset({C1})), mode="complete"
    )
    assert plan.ops == (AttachThingPrincipal("t1", C2), DetachThingPrincipal("t1", C1))
    assert plan.requires == (ObjectKey.certificate(C2),)
    assert plan.follow_ups == (ObjectKey.certificate(C1),)  # cleaned up if gone from the source


def test_jitr_mode_leaves_certificates_to_the_target() -> None:
    source = ThingState(name="t1", principals=None, groups=frozenset())
    plan = plan_thing("t1", source, thing(principals=frozenset({C1})), mode="jitr")
    assert plan.in_sync


def test_deleted_thing_is_detached_then_deleted_and_its_certificates_followed_up() -> None:
    plan = plan_thing("t1", None, thing(principals=frozenset({C1})), mode="complete")
    assert plan.ops == (DetachThingPrincipal("t1", C1), DeleteThing("t1"))
    assert plan.follow_ups == (ObjectKey.certificate(C1),)
    jitr = plan_thing("t1", None, thing(principals=frozenset({C1})), mode="jitr")
    assert jitr.ops == (DetachThingPrincipal("t1", C1), DeleteThing("t1"))
    assert jitr.follow_ups == ()
    assert plan_thing("t1", None, None, mode="complete").in_sync


def test_group_membership_added_and_removed() -> None:
    plan = plan_thing(
        "t1",
        thing(groups=frozenset({"a", "b"})),
        thing(groups=frozenset({"b", "c"})),
        mode="complete",
    )
    assert plan.ops == (AddThingToThingGroup("a", "t1"), RemoveThingFromThingGroup("c", "t1"))


# -- thing types ---------------------------------------------------------------------------


def test_thing_type_created_deprecated_and_undeprecated() -> None:
    source = ThingTypeState(
        name="s", description="d", searchable_attributes=("a",), deprecated=True
    )
    assert plan_thing_type("s", source, None, now_epoch_s=0).ops == (
        CreateThingType("s", "d", ("a",)),
        DeprecateThingType("s"),
    )
    live = ThingTypeState(name="s", description="d", searchable_attributes=("a",))
    assert plan_thing_type("s", source, live, now_epoch_s=0).ops == (DeprecateThingType("s"),)
    assert plan_thing_type("s", live, source, now_epoch_s=0).ops == (
        DeprecateThingType("s", undo=True),
    )


def test_thing_type_deletion_is_scheduled_never_waited_for() -> None:
    key = ObjectKey.thing_type("s")
    live = ThingTypeState(name="s")
    first = plan_thing_type("s", None, live, now_epoch_s=1000)
    assert first.ops[0] == DeprecateThingType("s")
    assert isinstance(first.ops[1], ScheduleAt)
    assert first.ops[1].key == key
    assert first.ops[1].epoch_s >= 1300
    deprecated = ThingTypeState(name="s", deprecated=True, deprecation_epoch_s=1000)
    early = plan_thing_type("s", None, deprecated, now_epoch_s=1100)
    assert len(early.ops) == 1
    assert isinstance(early.ops[0], ScheduleAt)
    assert early.ops[0].epoch_s == pytest.approx(1301)
    assert plan_thing_type("s", None, deprecated, now_epoch_s=1300).ops == (DeleteThingType("s"),)


def test_immutable_thing_type_properties_are_reported_not_written() -> None:
    plan = plan_thing_type(
        "s",
        ThingTypeState(name="s", description="new"),
        ThingTypeState(name="s", description="old"),
        now_epoch_s=0,
    )
    assert len(plan.ops) == 1
    assert isinstance(plan.ops[0], Conflict)
    assert not plan.writes


# -- thing groups --------------------------------------------------------------------------


def test_thing_group_create_update_delete() -> None:
    child = ThingGroupState(name="c", parent="p", description="d", attributes={"a": "1"})
    created = plan_thing_group("c", child, None)
    assert created.ops == (CreateThingGroup("c", "p", "d", {"a": "1"}),)
    assert created.requires == (ObjectKey.thing_group("p"),)
    stale = ThingGroupState(
        name="c", parent="p", description="old", attributes={"a": "0", "b": "2"}
    )
    assert plan_thing_group("c", child, stale).ops == (
        UpdateThingGroup("c", "d", {"a": "1", "b": ""}),
    )
    assert plan_thing_group("c", None, child).ops == (DeleteThingGroup("c"),)
    assert plan_thing_group("c", child, child).in_sync


def test_a_changed_parent_recreates_the_group_and_reapplies_its_members() -> None:
    source = ThingGroupState(name="c", parent="p2", members=frozenset({"t1"}))
    target = ThingGroupState(name="c", parent="p1", members=frozenset({"t2"}))
    plan = plan_thing_group("c", source, target)
    assert plan.ops == (DeleteThingGroup("c"), CreateThingGroup("c", "p2", None, {}))
    assert plan.follow_ups == (ObjectKey.thing("t1"), ObjectKey.thing("t2"))


# -- certificates --------------------------------------------------------------------------


def cert(
    status: str = "ACTIVE",
    policies: frozenset[str] = frozenset(),
    things: frozenset[str] | None = None,
) -> CertificateState:
    return CertificateState(
        certificate_id=C1, pem="PEM", status=status, policies=policies, things=things
    )


@pytest.mark.parametrize(
    ("status", "registered"),
    [
        ("ACTIVE", "ACTIVE"),
        ("INACTIVE", "INACTIVE"),
        ("REVOKED", "REVOKED"),
        ("PENDING_ACTIVATION", "INACTIVE"),
    ],
)
def test_certificates_are_registered_with_the_sources_status_never_always_active(
    status: str, registered: str
) -> None:
    plan = plan_certificate(C1, cert(status, frozenset({"p"})), None)
    assert plan.ops == (RegisterCertificateWithoutCA(C1, "PEM", registered), AttachPolicy("p", C1))
    assert plan.requires == (ObjectKey.policy("p"),)


def test_certificate_status_changes_are_mirrored() -> None:
    assert plan_certificate(C1, cert("REVOKED"), cert("ACTIVE")).ops == (
        UpdateCertificate(C1, "REVOKED"),
    )
    assert plan_certificate(C1, cert("INACTIVE"), cert("ACTIVE")).ops == (
        UpdateCertificate(C1, "INACTIVE"),
    )
    assert plan_certificate(C1, cert("ACTIVE"), cert("INACTIVE")).ops == (
        UpdateCertificate(C1, "ACTIVE"),
    )
    revived = plan_certificate(C1, cert("ACTIVE"), cert("REVOKED")).ops
    assert len(revived) == 1
    assert isinstance(revived[0], Conflict)


def test_certificate_gone_from_the_source_is_detached_deactivated_and_deleted() -> None:
    target = cert("ACTIVE", frozenset({"p"}), things=frozenset({"t1"}))
    plan = plan_certificate(C1, None, target)
    assert plan.ops == (
        DetachThingPrincipal("t1", C1),
        DetachPolicy("p", C1),
        UpdateCertificate(C1, "INACTIVE"),
        DeleteCertificate(C1),
    )
    assert plan.follow_ups == (ObjectKey.policy("p"),)


# -- policies ------------------------------------------------------------------------------


def document(resource: object, **extra: object) -> str:
    statement = {"Effect": "Allow", "Action": "iot:Connect", "Resource": resource, **extra}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def resources(doc: str) -> object:
    return json.loads(doc)["Statement"][0]["Resource"]


def test_policy_arns_are_rewritten_by_parsing_never_by_replace() -> None:
    doc = document(
        [
            "arn:aws:iot:us-east-1:111111111111:client/${iot:Connection.Thing.ThingName}",
            "arn:aws:iot:us-east-1:111111111111:topic/us-east-1/telemetry",
            "arn:aws:iot:eu-west-1:111111111111:topic/elsewhere",
            "arn:aws:iot:*:111111111111:topic/any",
            "arn:aws:s3:us-east-1:111111111111:bucket",
            "us-east-1",
        ],
        Condition={"ArnEquals": {"iot:SourceArn": "arn:aws:iot:us-east-1:111111111111:thing/t1"}},
    )
    rewritten = rewrite_policy_document("p", doc, EAST, WEST)
    assert resources(rewritten) == [
        "arn:aws:iot:us-west-2:222222222222:client/${iot:Connection.Thing.ThingName}",
        # the region inside the topic name is data, not a region: left alone
        "arn:aws:iot:us-west-2:222222222222:topic/us-east-1/telemetry",
        "arn:aws:iot:eu-west-1:111111111111:topic/elsewhere",
        "arn:aws:iot:*:111111111111:topic/any",
        "arn:aws:s3:us-east-1:111111111111:bucket",
        "us-east-1",
    ]
    condition = json.loads(rewritten)["Statement"][0]["Condition"]
    assert condition == {
        "ArnEquals": {"iot:SourceArn": "arn:aws:iot:us-west-2:222222222222:thing/t1"}
    }


@pytest.mark.parametrize("bad", ["{not json", "[]", '{"Statement": "x"}', '{"Version": "1"}'])
def test_a_policy_that_does_not_parse_is_a_permanent_error(bad: str) -> None:
    with pytest.raises(PolicyDocumentError, match="policy p: the document does not parse"):
        rewrite_policy_document("p", bad, EAST, WEST)


def policy(*docs: str, default: int = -1, arn_scope: ArnScope = EAST) -> PolicyState:
    versions = tuple(
        PolicyVersion(version_id=str(i + 1), document=doc, is_default=i == (default % len(docs)))
        for i, doc in enumerate(docs)
    )
    arn = f"arn:aws:iot:{arn_scope.region}:{arn_scope.account}:policy/p"
    return PolicyState(name="p", arn=arn, versions=versions)


def east(name: str) -> str:
    return document(f"arn:aws:iot:us-east-1:111111111111:topic/{name}")


def west(name: str) -> str:
    return rewrite_policy_document("p", east(name), EAST, WEST)


def test_policy_created_with_its_versions_rewritten() -> None:
    plan = plan_policy(
        "p", policy(east("v1"), east("v2")), None, source_scope=EAST, target_scope=WEST
    )
    assert plan.ops == (CreatePolicy("p", west("v2")), CreatePolicyVersion("p", west("v1")))


def test_new_policy_version_and_default_change() -> None:
    target = policy(west("v1"), arn_scope=WEST)
    plan = plan_policy(
        "p", policy(east("v1"), east("v2")), target, source_scope=EAST, target_scope=WEST
    )
    assert plan.ops == (CreatePolicyVersion("p", west("v2"), set_as_default=True),)
    default_back = plan_policy(
        "p",
        policy(east("v1"), east("v2"), default=0),
        policy(west("v1"), west("v2"), arn_scope=WEST),
        source_scope=EAST,
        target_scope=WEST,
    )
    assert default_back.ops == (SetDefaultPolicyVersion("p", "1"),)
    same = plan_policy("p", policy(east("v1")), target, source_scope=EAST, target_scope=WEST)
    assert same.in_sync


def test_versions_gone_from_the_source_are_deleted_first_and_five_are_never_exceeded() -> None:
    source = policy(*(east(f"n{i}") for i in range(5)))  # five new documents, n4 the default
    target = policy(*(west(f"o{i}") for i in range(5)), arn_scope=WEST)  # five old ones, o4 default
    plan = plan_policy("p", source, target, source_scope=EAST, target_scope=WEST)
    assert plan.ops[:4] == tuple(DeletePolicyVersion("p", str(i)) for i in range(1, 5))
    assert plan.ops[4] == CreatePolicyVersion("p", west("n4"), set_as_default=True)
    assert plan.ops[5] == DeletePolicyVersion("p", "5")
    assert {op.document for op in plan.ops[6:]} == {west(f"n{i}") for i in range(4)}  # type: ignore[union-attr]


def test_a_full_target_hands_its_default_on_before_deleting_it() -> None:
    kept = [east(f"k{i}") for i in range(4)]
    source = policy(*kept, east("new"))
    target = policy(
        *(rewrite_policy_document("p", d, EAST, WEST) for d in kept), west("old"), arn_scope=WEST
    )
    plan = plan_policy("p", source, target, source_scope=EAST, target_scope=WEST)
    assert plan.ops == (
        SetDefaultPolicyVersion("p", "1"),
        DeletePolicyVersion("p", "5"),
        CreatePolicyVersion("p", west("new"), set_as_default=True),
    )


def test_policy_gone_from_the_source_is_detached_and_deleted() -> None:
    target = PolicyState(
        name="p",
        versions=(
            PolicyVersion(version_id="1", document="{}"),
            PolicyVersion(version_id="2", document="{}", is_default=True),
        ),
        targets=frozenset({"arn:aws:iot:us-west-2:2:cert/x"}),
    )
    plan = plan_policy("p", None, target, source_scope=EAST, target_scope=WEST)
    assert plan.ops == (
        DetachPolicy("p", "arn:aws:iot:us-west-2:2:cert/x"),
        DeletePolicyVersion("p", "1"),
        DeletePolicy("p"),
    )


# -- shadows -------------------------------------------------------------------------------

KEY = ObjectKey.for_shadow("t1", "cfg")
TOKEN = "iotdr:us-east-1"


def shadow(
    version: int,
    desired: dict[str, object] | None = None,
    reported: dict[str, object] | None = None,
) -> ShadowState:
    return ShadowState(thing="t1", name="cfg", version=version, desired=desired, reported=reported)


def test_state_patch_is_minimal() -> None:
    source = {"a": 1, "n": {"x": 1, "y": 2}, "list": [1, 2]}
    target = {"a": 1, "n": {"x": 0, "z": 3}, "list": [1], "gone": True}
    assert state_patch(source, target) == {
        "n": {"x": 1, "y": 2, "z": None},
        "list": [1, 2],
        "gone": None,
    }
    assert state_patch(None, {"a": 1}) is None
    assert state_patch(source, source) == {}


def test_shadow_copied_with_origin_marker_and_version_guard() -> None:
    plan = plan_shadow(
        KEY,
        shadow(5, reported={"a": 2}),
        shadow(3, reported={"a": 1}, desired={"b": 1}),
        None,
        client_token=TOKEN,
    )
    assert plan.ops == (
        UpdateThingShadow(
            "t1",
            "cfg",
            {"desired": None, "reported": {"a": 2}},
            client_token=TOKEN,
            expected_version=3,
            source_version=5,
        ),
    )
    created = plan_shadow(KEY, shadow(1, reported={"a": 1}), None, None, client_token=TOKEN)
    assert created.ops == (
        UpdateThingShadow(
            "t1",
            "cfg",
            {"reported": {"a": 1}},
            client_token=TOKEN,
            expected_version=None,
            source_version=1,
        ),
    )


def test_equal_shadow_content_is_never_rewritten() -> None:
    assert plan_shadow(
        KEY, shadow(9, reported={"a": 1}), shadow(2, reported={"a": 1}), None, client_token=TOKEN
    ).in_sync


def test_shadow_version_guard_against_the_sync_point() -> None:
    sync = ShadowSync(source_version=5, target_version=3)
    source_moved = plan_shadow(
        KEY, shadow(6, reported={"a": 3}), shadow(3, reported={"a": 2}), sync, client_token=TOKEN
    )
    assert isinstance(source_moved.ops[0], UpdateThingShadow)
    stale = plan_shadow(
        KEY, shadow(4, reported={"a": 1}), shadow(3, reported={"a": 2}), sync, client_token=TOKEN
    )
    assert stale.in_sync  # an older read of the source never overwrites a newer copy
    target_newer = plan_shadow(
        KEY, shadow(5, reported={"a": 2}), shadow(4, reported={"a": 9}), sync, client_token=TOKEN
    )
    assert [type(op) for op in target_newer.ops] == [Conflict]
    assert "newer in the target" in target_newer.ops[0].reason  # type: ignore[union-attr]
    both = plan_shadow(
        KEY, shadow(6, reported={"a": 3}), shadow(4, reported={"a": 9}), sync, client_token=TOKEN
    )
    assert "both regions" in both.ops[0].reason  # type: ignore[union-attr]


def test_shadow_deletion_replicates_unless_the_target_changed_since() -> None:
    sync = ShadowSync(source_version=5, target_version=3)
    assert plan_shadow(KEY, None, shadow(3, reported={"a": 1}), sync, client_token=TOKEN).ops == (
        DeleteThingShadow("t1", "cfg"),
    )
    assert plan_shadow(KEY, None, shadow(3), None, client_token=TOKEN).ops == (
        DeleteThingShadow("t1", "cfg"),
    )
    kept = plan_shadow(KEY, None, shadow(4, reported={"a": 1}), sync, client_token=TOKEN)
    assert [type(op) for op in kept.ops] == [Conflict]
    assert plan_shadow(KEY, None, None, sync, client_token=TOKEN).in_sync
