"""Assessment: read one object in the source and in the target, and hand both to its planner.

The reads are what each planner needs and no more, because most reads cost a
10-TPS quota: a thing's certificates only in complete mode (or when it is to
be deleted, to detach them), a certificate's things and a policy's targets
only when the object is gone from the source, a thing type's deprecation in
the target only when a plan sets that type. The source's state can be passed
in when it was read already: the engine plans again after writing an object's
requirements, and the source has not changed for that.

Judged (the failback direction, or forward with ``judged``), a registry
object's fingerprints are judged three ways against its sync point
(:func:`~replicator.core._sync.judge`): the plan keeps only what this direction
may write (:func:`~replicator.core._sync.guard`), and the assessment says when the
stale side is the source (``backward``), which the engine then writes from the
other direction's assessor. Shadows are planned with ``failback=True`` in the
failback direction; one that only the target changed since its sync point is
``backward`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from replicator.core._arns import ArnScope, scope_of_arn
from replicator.core._ops import Conflict, Plan
from replicator.core._plan import plan_thing, plan_thing_group, plan_thing_type
from replicator.core._plan_security import (
    MIRRORED_STATUSES,
    plan_certificate,
    plan_mirrored_status,
    plan_policy,
)
from replicator.core._plan_shadow import NEWER_IN_TARGET, ShadowSync, plan_shadow
from replicator.core._records import origin_token
from replicator.core._state import (
    CertificateState,
    PolicyState,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)
from replicator.core._sync import (
    activation_guard,
    fingerprint,
    guard,
    judge,
    target_only_guard,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.core._plan import Mode
    from replicator.core._region import RegionApi
    from replicator.core._state import ObjectKey
    from replicator.core._sync import Direction, Toward
    from replicator.runtime._journal import Journal

__all__ = ["UNREAD", "Assessment", "Assessor"]


class _Unread:
    def __repr__(self) -> str:
        return "UNREAD"


UNREAD: Final = _Unread()
"""Marks a state that was not read yet."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """An object's plan with the states it was made from (for shadows' sync points).

    ``backward``: judged three ways, the stale side is the source (see ``_sync.judge``).
    """

    plan: Plan
    source: object
    target: object
    backward: bool = False


class Assessor:
    """Reads objects in two regions and plans them.

    Args:
        source: the region copied from.
        target: the region copied to.
        journal: the sync points (see ``_sync_points.py``).
        mode: ``complete`` or ``jitr``.
        wall: epoch seconds, for thing type deletion schedules.
        delete_after_s: AWS's wait between deprecating and deleting a type.
        direction: ``forward`` (the source is authoritative) or ``failback``
            (copy back only what changed in the source since the last sync).
        judged: forward only: judge registry objects three ways and leave
            those that only the target changed since the last sync (reported;
            ``backward``: the engine running both ways copies them back).
        delete_target_only: forward only: delete objects that exist only in
            the target even without a sync point proving they were replicated
            (``--delete-target-only``; see ``_sync.target_only_guard``).
    """

    def __init__(
        self,
        source: RegionApi,
        target: RegionApi,
        journal: Journal,
        *,
        mode: Mode,
        wall: Callable[[], float],
        delete_after_s: float,
        direction: Direction = "forward",
        judged: bool = False,
        delete_target_only: bool = False,
    ) -> None:
        self.source = source
        self.target = target
        self.journal = journal
        self.mode: Mode = mode
        self.direction: Direction = direction
        self.judged = judged or direction == "failback"
        self.delete_target_only = delete_target_only
        self._wall = wall
        self._delete_after_s = delete_after_s

    def __repr__(self) -> str:
        return (
            f"Assessor({self.source.region} -> {self.target.region}, mode={self.mode}, "
            f"{self.direction})"
        )

    def fingerprints(self, assessment: Assessment) -> tuple[str | None, str | None]:
        """The source's and the target's fingerprints of a registry object (see ``_sync.py``)."""
        scopes = [_scope(self.source), _scope(self.target)]
        scopes.extend(
            found
            for state in (assessment.source, assessment.target)
            if isinstance(state, PolicyState) and (found := scope_of_arn(state.arn))
        )
        both = tuple(dict.fromkeys(s for s in scopes if s.account))
        return (
            fingerprint(assessment.source, mode=self.mode, scopes=both),
            fingerprint(assessment.target, mode=self.mode, scopes=both),
        )

    def assess(
        self,
        key: ObjectKey,
        *,
        sync: ShadowSync | None = None,
        source_state: object = UNREAD,
        required: bool = False,
    ) -> Assessment:
        """Read ``key`` (the source only if ``source_state`` is :data:`UNREAD`) and plan it.

        Args:
            key: the object.
            sync: a shadow's sync point; None reads it from the journal.
            source_state: the source's state when already read (writes to the
                target do not change it).
            required: planned as another object's requirement (failback then
                copies a type, group or policy that exists only in the source).
        """
        if key.kind == "shadow":
            sync = sync or self._shadow_sync(key)
            found = self._keep_target_only(
                self._assess(key, sync=sync, source_state=source_state), synced=sync is not None
            )
            newer = found.plan.ops == (Conflict(key, NEWER_IN_TARGET),)
            return Assessment(found.plan, found.source, found.target, backward=newer)
        synced = self.journal.object_sync(key, (self.source.region, self.target.region))
        found = self._keep_target_only(
            self._assess(key, sync=None, source_state=source_state), synced=synced is not None
        )
        if not self.judged:
            return found
        if self.direction == "failback" and _never_failed_back(found, synced):
            return Assessment(Plan(key), found.source, found.target)
        source, target = self.fingerprints(found)
        # Never-synced objects that exist on one side only: devices (things and
        # their certificates) registered in the secondary during an outage, and
        # what such a device needs, are the secondary's own; other kinds are the
        # primary's (a type deleted there is deleted, not brought back).
        own = key.kind in ("thing", "certificate") or required
        failback = self.direction == "failback"
        primary, secondary = (target, source) if failback else (source, target)
        verdict = judge(primary=primary, secondary=secondary, synced=synced, own_new=own)
        writes: Toward = "primary" if failback else "secondary"
        plan = guard(found.plan, verdict, writes=writes)
        if failback and key.kind == "certificate":
            watching = self.journal.watching_since()
            plan = activation_guard(
                plan, source=found.source, synced=synced, watching_since=watching
            )
        backward = verdict.toward not in (None, writes)
        return Assessment(plan, found.source, found.target, backward=backward)

    def _keep_target_only(self, found: Assessment, *, synced: bool) -> Assessment:
        """Forward: an object only in the target is deleted only when provably replicated."""
        if self.direction != "forward" or self.delete_target_only:
            return found
        plan = target_only_guard(
            found.plan, source=found.source, target=found.target, synced=synced
        )
        return found if plan is found.plan else Assessment(plan, found.source, found.target)

    def _shadow_sync(self, key: ObjectKey) -> ShadowSync | None:
        """The shadow's sync point in the journal, in this direction's order."""
        found = self.journal.shadow_sync(key)
        if found is None:
            return None
        first, first_version, second, second_version = found
        if (first, second) == (self.source.region, self.target.region):
            return ShadowSync(first_version, second_version)
        if (first, second) == (self.target.region, self.source.region):
            return ShadowSync(second_version, first_version)
        return None

    def _assess(
        self, key: ObjectKey, *, sync: ShadowSync | None, source_state: object
    ) -> Assessment:
        if self.mode == "jitr" and key.kind in ("certificate", "policy"):
            if key.kind == "certificate" and self.direction == "forward":
                return self._mirror_refusal(key, source_state)
            return Assessment(Plan(key), None, None)  # the target's JITR handler's business
        source = self._read_source(key) if source_state is UNREAD else source_state
        match key.kind:
            case "thing":
                assert source is None or isinstance(source, ThingState)
                return self._thing(key, source)
            case "thingType":
                assert source is None or isinstance(source, ThingTypeState)
                target_type = self.target.read_thing_type(key.name)
                plan = plan_thing_type(
                    key.name,
                    source,
                    target_type,
                    now_epoch_s=self._wall(),
                    delete_after_s=self._delete_after_s,
                )
                return Assessment(plan, source, target_type)
            case "thingGroup":
                assert source is None or isinstance(source, ThingGroupState)
                target_group = self.target.read_thing_group(key.name, members=True)
                return Assessment(
                    plan_thing_group(key.name, source, target_group), source, target_group
                )
            case "certificate":
                assert source is None or isinstance(source, CertificateState)
                target_cert = self.target.read_certificate(key.name, things=source is None)
                return Assessment(
                    plan_certificate(key.name, source, target_cert), source, target_cert
                )
            case "policy":
                assert source is None or isinstance(source, PolicyState)
                return self._policy(key, source)
        assert source is None or isinstance(source, ShadowState)
        target_shadow = self.target.read_shadow(key.name, key.shadow)
        token = origin_token(self.source.region)
        plan = plan_shadow(
            key,
            source,
            target_shadow,
            sync,
            client_token=token,
            failback=self.direction == "failback",
        )
        return Assessment(plan, source, target_shadow)

    def _read_source(self, key: ObjectKey) -> object:
        src = self.source
        match key.kind:
            case "thing":
                return src.read_thing(key.name, principals=self.mode == "complete")
            case "thingType":
                return src.read_thing_type(key.name)
            case "thingGroup":
                return src.read_thing_group(key.name, members=True)
            case "certificate":
                return src.read_certificate(key.name, things=False)
            case "policy":
                return src.read_policy(key.name, targets=False)
        return src.read_shadow(key.name, key.shadow)

    def _mirror_refusal(self, key: ObjectKey, source_state: object) -> Assessment:
        """JITR mode: a certificate REVOKED or INACTIVE in the source is set so in the target.

        Nothing else of a certificate is copied in this mode (the target's JITR
        handler registers and activates), and never ACTIVE: a revocation in the
        primary must reach a secondary where the device may connect next.
        """
        source = self._read_source(key) if source_state is UNREAD else source_state
        assert source is None or isinstance(source, CertificateState)
        if source is None or source.status not in MIRRORED_STATUSES:
            return Assessment(Plan(key), source, None)
        target = self.target.read_certificate(key.name, things=False)
        plan = plan_mirrored_status(key.name, source.status, target)
        return Assessment(plan, source, target)

    def _thing(self, key: ObjectKey, source: ThingState | None) -> Assessment:
        complete = self.mode == "complete"
        target = self.target.read_thing(key.name, principals=complete or source is None)
        plan = plan_thing(key.name, source, target, mode=self.mode)
        wanted_type = source.type_name if source is not None else None
        if wanted_type and any(op.api in ("CreateThing", "UpdateThing") for op in plan.ops):
            found = self.target.read_thing_type(wanted_type)
            if found is not None and found.deprecated:
                plan = plan_thing(
                    key.name,
                    source,
                    target,
                    mode=self.mode,
                    deprecated_in_target=frozenset({wanted_type}),
                )
        return Assessment(plan, source, target)

    def _policy(self, key: ObjectKey, source: PolicyState | None) -> Assessment:
        target = self.target.read_policy(key.name, targets=source is None)
        source_account = self.source.account_id or ""
        if source is not None and (found := scope_of_arn(source.arn)) is not None:
            source_account = found.account
        plan = plan_policy(
            key.name,
            source,
            target,
            source_scope=ArnScope(self.source.region, source_account),
            target_scope=ArnScope(self.target.region, self.target.account_id or source_account),
        )
        return Assessment(plan, source, target)


def _scope(region: RegionApi) -> ArnScope:
    return ArnScope(region.region, region.account_id or "")


_TRANSIENT: Final = frozenset({"PENDING_ACTIVATION", "PENDING_TRANSFER", "REGISTER_INACTIVE"})


def _never_failed_back(found: Assessment, synced: str | None) -> bool:
    """What failback leaves alone whatever the fingerprints say.

    A certificate in a transient status in the primary (being activated by
    the primary's own JITR, being transferred): the secondary holds only its
    INACTIVE stand-in. A thing type that is deprecated in the secondary and was
    never synced: a type on its way out (the forward direction deprecates a
    type five minutes before deleting it), not one to bring back.
    """
    target, source = found.target, found.source
    if isinstance(target, CertificateState) and target.status in _TRANSIENT:
        return True
    return synced is None and isinstance(source, ThingTypeState) and source.deprecated
