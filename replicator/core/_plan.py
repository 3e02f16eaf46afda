"""Plans for the registry: things, thing types and thing groups. Pure functions, no I/O.

Theory of operation. Replication is level-triggered: whatever event woke the
engine, it reads an object's state in the source region and in the target
region and asks this module for the writes that make the target match the
source. A plan depends on the two states alone (and, for a thing type's
deletion, on the time), never on the event, so a duplicate, late or reordered
event yields either the same writes or none, and a missed one is repaired by
the next trigger or by reconcile. ``None`` means "does not exist".

Minimal writes: attributes are merged with only the changed keys (an empty
value removes a key, as AWS documents), a type is set or removed only when it
differs, principals and groups are attached or detached by set difference.
AWS rules that cannot be met now are scheduled rather than waited for: a
thing type is deleted only five minutes after its deprecation, so the plan
deprecates it and returns a :class:`~replicator.core._ops.ScheduleAt`. What AWS
cannot change (a thing type's description, a group's parent) is reported as a
:class:`~replicator.core._ops.Conflict` or done by delete-and-create.
"""

from __future__ import annotations

from typing import Final, Literal

from replicator.core._ops import (
    AddThingToThingGroup,
    AttachThingPrincipal,
    Conflict,
    CreateThing,
    CreateThingGroup,
    CreateThingType,
    DeleteThing,
    DeleteThingGroup,
    DeleteThingType,
    DeprecateThingType,
    DetachThingPrincipal,
    Op,
    Plan,
    RemoveThingFromThingGroup,
    ScheduleAt,
    UpdateThing,
    UpdateThingGroup,
)
from replicator.core._state import ObjectKey, ThingGroupState, ThingState, ThingTypeState

__all__ = [
    "THING_TYPE_DELETE_AFTER_S",
    "Mode",
    "attribute_patch",
    "plan_thing",
    "plan_thing_group",
    "plan_thing_type",
]

Mode = Literal["complete", "jitr"]

THING_TYPE_DELETE_AFTER_S: Final = 300.0
"""AWS deletes a thing type only five minutes after its deprecation."""
_SCHEDULE_MARGIN_S: Final = 1.0


def attribute_patch(source: dict[str, str], target: dict[str, str]) -> dict[str, str]:
    """The merge patch that turns ``target``'s attributes into ``source``'s ('' removes a key)."""
    patch = {k: v for k, v in source.items() if target.get(k) != v}
    patch.update({k: "" for k in target if k not in source})
    return patch


def plan_thing(
    name: str,
    source: ThingState | None,
    target: ThingState | None,
    *,
    mode: Mode,
    deprecated_in_target: frozenset[str] = frozenset(),
) -> Plan:
    """The writes that make the target's thing match the source's.

    In ``complete`` mode the thing's certificates (principals) are attached
    and detached too; in ``jitr`` mode they are the target's own (its JITR
    handler attaches them), except that a thing deleted in the source has
    them detached in the target, since AWS deletes no thing with principals.

    AWS gives no thing a deprecated type; a thing that has one in the source
    (set before the deprecation) gets it in the target between an undo of the
    deprecation and a new one. ``deprecated_in_target`` names the types that
    are deprecated in the target.
    """
    key = ObjectKey.thing(name)
    if source is None and target is None:
        return Plan(key)
    if source is None:
        assert target is not None
        detached = sorted(target.principals or ())
        ops: list[Op] = [DetachThingPrincipal(name, cert) for cert in detached]
        ops.append(DeleteThing(name))
        cleanup = [ObjectKey.certificate(c) for c in detached] if mode == "complete" else []
        return Plan(key, tuple(ops), follow_ups=tuple(cleanup))

    ops = []
    requires: list[ObjectKey] = []
    follow: list[ObjectKey] = []
    if target is None:
        ops.append(CreateThing(name, source.type_name, dict(source.attributes)))
        if source.type_name:
            requires.append(ObjectKey.thing_type(source.type_name))
    else:
        patch = attribute_patch(source.attributes, target.attributes)
        type_differs = source.type_name != target.type_name
        if patch or type_differs:
            ops.append(
                UpdateThing(
                    name,
                    patch,
                    type_name=source.type_name if type_differs else None,
                    remove_type=type_differs and source.type_name is None,
                )
            )
            if type_differs and source.type_name:
                requires.append(ObjectKey.thing_type(source.type_name))

    if source.type_name in deprecated_in_target and any(
        isinstance(op, CreateThing | UpdateThing) and op.type_name == source.type_name for op in ops
    ):
        ops.insert(0, DeprecateThingType(source.type_name, undo=True))
        ops.append(DeprecateThingType(source.type_name))

    if mode == "complete" and source.principals is not None:
        have = (target.principals if target is not None else None) or frozenset()
        for cert in sorted(source.principals - have):
            requires.append(ObjectKey.certificate(cert))
            ops.append(AttachThingPrincipal(name, cert))
        for cert in sorted(have - source.principals):
            ops.append(DetachThingPrincipal(name, cert))
            follow.append(ObjectKey.certificate(cert))

    if source.groups is not None:
        have_groups = (target.groups if target is not None else None) or frozenset()
        for group in sorted(source.groups - have_groups):
            requires.append(ObjectKey.thing_group(group))
            ops.append(AddThingToThingGroup(group, name))
        ops.extend(
            RemoveThingFromThingGroup(group, name) for group in sorted(have_groups - source.groups)
        )
    return Plan(key, tuple(ops), tuple(requires), tuple(follow))


def plan_thing_type(
    name: str,
    source: ThingTypeState | None,
    target: ThingTypeState | None,
    *,
    now_epoch_s: float,
    delete_after_s: float = THING_TYPE_DELETE_AFTER_S,
) -> Plan:
    """The writes that make the target's thing type match the source's.

    A type gone from the source is deprecated in the target, then deleted once
    ``delete_after_s`` have passed since its deprecation there: until then the
    plan holds a :class:`ScheduleAt` for that moment.
    """
    key = ObjectKey.thing_type(name)
    if source is None and target is None:
        return Plan(key)
    if source is None:
        assert target is not None
        if not target.deprecated:
            due = now_epoch_s + delete_after_s + _SCHEDULE_MARGIN_S
            reason = "deleted in the source: delete once deprecated for 5 minutes"
            return Plan(key, (DeprecateThingType(target.name), ScheduleAt(key, due, reason)))
        since = target.deprecation_epoch_s
        if since is None or now_epoch_s >= since + delete_after_s:
            return Plan(key, (DeleteThingType(target.name),))
        due = since + delete_after_s + _SCHEDULE_MARGIN_S
        return Plan(key, (ScheduleAt(key, due, "deprecated less than 5 minutes ago"),))
    ops: list[Op] = []
    if target is None:
        ops.append(
            CreateThingType(source.name, source.description, tuple(source.searchable_attributes))
        )
        if source.deprecated:
            ops.append(DeprecateThingType(source.name))
        return Plan(key, tuple(ops))
    if source.deprecated != target.deprecated:
        ops.append(DeprecateThingType(source.name, undo=not source.deprecated))
    if source.description != target.description or sorted(source.searchable_attributes) != sorted(
        target.searchable_attributes
    ):
        ops.append(
            Conflict(key, "description or searchable attributes differ; AWS cannot update them")
        )
    return Plan(key, tuple(ops))


def plan_thing_group(
    name: str, source: ThingGroupState | None, target: ThingGroupState | None
) -> Plan:
    """The writes that make the target's thing group match the source's.

    A group's parent cannot be changed in AWS: a group whose parent differs is
    deleted and created again under the right parent. Memberships belong to
    the things' plans; a group whose members differ between the regions (it
    was deleted and created again in the source, and the memberships went with
    it, unannounced) names those things as follow-ups. A group gone from the
    source requires its target children to be applied first: AWS deletes no
    group that has children.
    """
    key = ObjectKey.thing_group(name)
    if source is None:
        if target is None:
            return Plan(key)
        children = tuple(ObjectKey.thing_group(c) for c in sorted(target.children or ()))
        return Plan(key, (DeleteThingGroup(name),), requires=children)
    create = CreateThingGroup(
        source.name, source.parent, source.description, dict(source.attributes)
    )
    requires = (ObjectKey.thing_group(source.parent),) if source.parent else ()
    if target is None:
        members = tuple(ObjectKey.thing(m) for m in sorted(source.members or ()))
        return Plan(key, (create,), requires, members)
    if source.parent != target.parent:
        either = (source.members or frozenset()) | (target.members or frozenset())
        follow = tuple(ObjectKey.thing(m) for m in sorted(either))
        return Plan(key, (DeleteThingGroup(source.name), create), requires, follow)
    ops: tuple[Op, ...] = ()
    patch = attribute_patch(source.attributes, target.attributes)
    if patch or source.description != target.description:
        ops = (UpdateThingGroup(source.name, source.description, patch),)
    differ = (source.members or frozenset()) ^ (target.members or frozenset())
    if source.members is None or target.members is None:
        differ = frozenset()
    return Plan(key, ops, follow_ups=tuple(ObjectKey.thing(m) for m in sorted(differ)))
