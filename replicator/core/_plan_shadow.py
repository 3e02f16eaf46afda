"""Plans for classic and named shadows: version-guarded, minimal, loop-free. Pure, no I/O.

Theory of operation. A shadow's version is per region: the target's version
says nothing about the source's. What the replicator can know is the pair of
versions at which the two regions last held the same content, because it made
them so (it wrote, or it found them equal): the *sync point*
(:class:`ShadowSync`), kept in the journal. Against it, the current versions
say who changed since:

=================  =================  =============================================
source changed    target changed     plan
=================  =================  =============================================
no                 no                 nothing (content equal)
yes                no                 copy the source's difference into the target
no                 yes                nothing: the target is newer (a device wrote
                                      there during a failover); reported, and it is
                                      the failback direction's to copy back
yes                yes                nothing: a conflict, reported
=================  =================  =============================================

Without a sync point (a new journal, or reconcile without one) the source is
taken as authoritative, except in the failback direction (secondary to
primary), which without a sync point copies only a shadow that the primary
lacks or whose newest leaf is older than the secondary's, and never deletes.
A source older than the sync point is a stale read and is never written over
newer content. Equal content is never rewritten.

The write is a patch (only the keys that differ, ``null`` for removed ones),
so untouched leaves keep their metadata timestamps in the target, and it
carries ``version`` (the target version just read: a device writing in
between makes it fail with a conflict, and the change is planned again) and a
``clientToken`` naming the source region: the target region's feed sees the
token in ``update/documents`` and does not copy the write back, so nothing
ping-pongs between regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from replicator.core._ops import Conflict, DeleteThingShadow, Op, Plan, UpdateThingShadow
from replicator.core._state import JsonObject, ObjectKey, ShadowState, canonical_json

__all__ = ["NEWER_IN_TARGET", "ShadowSync", "plan_shadow", "state_patch"]


@dataclass(frozen=True, slots=True)
class ShadowSync:
    """The source's and the target's versions when they last held the same content."""

    source_version: int
    target_version: int


def _equal(a: Any, b: Any) -> bool:
    return canonical_json(a) == canonical_json(b)


def state_patch(source: JsonObject | None, target: JsonObject | None) -> JsonObject | None:
    """The shadow update that turns ``target``'s section into ``source``'s.

    Returns ``None`` for "clear the section" and ``{}`` when nothing differs.
    Objects merge key by key, ``null`` removes a key, arrays and scalars replace.
    """
    if source is None:
        return None if target is not None else {}
    if target is None:
        return dict(source)
    patch: JsonObject = {}
    for key, value in source.items():
        have = target.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            child = state_patch(value, have)
            if child:
                patch[key] = child
        elif key not in target or not _equal(value, have):
            patch[key] = value
    patch.update({key: None for key in target if key not in source})
    return patch


def _update(key: ObjectKey, source: ShadowState, target: ShadowState | None, token: str) -> Op:
    state: JsonObject = {}
    for section in ("desired", "reported"):
        patch = state_patch(getattr(source, section), getattr(target, section, None))
        if patch is None or patch:
            state[section] = patch
    return UpdateThingShadow(
        key.name,
        key.shadow,
        state,
        client_token=token,
        expected_version=target.version if target is not None else None,
        source_version=source.version,
    )


NEWER_IN_TARGET: Final = "newer in the target (failback copies it back)"
"""The conflict of a shadow only the target changed since its sync point: the source is stale."""


def plan_shadow(
    key: ObjectKey,
    source: ShadowState | None,
    target: ShadowState | None,
    sync: ShadowSync | None,
    *,
    client_token: str,
    failback: bool = False,
) -> Plan:
    """The writes that make the target's shadow match the source's, if that is safe.

    Args:
        key: the shadow's key.
        source: the shadow in the source region, None when it does not exist.
        target: the shadow in the target region.
        sync: the last sync point, None when unknown.
        client_token: the origin marker that the write carries.
        failback: the failback direction: without a sync point, copy only what
            is missing or older in the target.
    """
    if source is None and target is None:
        return Plan(key)
    if failback and sync is None and target is not None:
        if source is None or source.same_content(target):
            return Plan(key)
        if source.updated_epoch_s <= target.updated_epoch_s:
            return Plan(key, (Conflict(key, "never synced, and not newer in the source"),))
        return Plan(key, (_update(key, source, target, client_token),))
    target_changed = (
        sync is not None and target is not None and target.version != sync.target_version
    )
    if source is None:
        if target_changed:
            return Plan(key, (Conflict(key, "deleted in the source, changed in the target"),))
        return Plan(key, (DeleteThingShadow(key.name, key.shadow),))
    if sync is not None and source.version < sync.source_version:
        return Plan(key)  # a stale read: the target already holds a newer copy
    if target is not None and source.same_content(target):
        return Plan(key)
    source_changed = sync is None or source.version != sync.source_version
    if target is None:
        if sync is not None and not source_changed:
            return Plan(key, (Conflict(key, "deleted in the target since the last copy"),))
        return Plan(key, (_update(key, source, None, client_token),))
    if not target_changed:
        return Plan(key, (_update(key, source, target, client_token),))
    if not source_changed:
        return Plan(key, (Conflict(key, NEWER_IN_TARGET),))
    return Plan(key, (Conflict(key, "changed in both regions since the last copy"),))
