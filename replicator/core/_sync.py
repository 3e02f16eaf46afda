"""Sync points of registry objects, and the three-way judgement over them. Pure, no I/O.

Theory of operation. With both regions written (devices and operators in the
secondary during an outage), neither region is simply right: copying either
over the other wholesale would resurrect deletions, undo changes still queued,
or delete what the other never saw. What tells "changed in the secondary" from
"not yet replicated to it" is the *sync point*: a region-neutral fingerprint of
the content both regions held the last time the replicator made them equal (it
wrote, or found them equal), kept in the journal (``object_sync``). Each object
is judged three ways, its primary's and secondary's fingerprints against its
sync point (:func:`judge`), and written toward the stale side:

=================  =====================  ======================================
primary changed    secondary changed      stale, written
=================  =====================  ======================================
no                 no                     neither (in sync)
yes                no                     the secondary
no                 yes                    the primary (copied back)
yes                yes                    the secondary: the primary wins, and
                                          the conflict is reported
=================  =====================  ======================================

Without a sync point (an object the replicator never synced, or a new journal)
only a thing or certificate that exists in the secondary alone is copied to
the primary, with what it requires (its type, groups, policies): that is a
device registered in the secondary during an outage, by JITR or by an
operator. Otherwise the primary's content is the one copied (an object in both
regions that differs is reported as contested), and other kinds that exist only
in the secondary are the primary's business (a type the primary deleted is not
brought back).

A direction that runs alone applies its half of the judgement:
:func:`guard` with ``writes="secondary"`` (a forward reconcile with
``--keep-target-changes``: what only the secondary changed, and a device
registered only there, is not overwritten nor deleted) or ``writes="primary"``
(``--direction secondary-to-primary``, :func:`failback_guard`) reports what
the other direction would write as a conflict and leaves it.

Fingerprints cover what the mode replicates and what is comparable across
regions: a thing's type, attributes and groups (and certificates in complete
mode), a type's description, searchable attributes and deprecation, a group's
parent, description and attributes, a certificate's status and policies, a
policy's default document with its ARNs rewritten to a neutral scope. Shadows
have their own sync points (versions, ``_plan_shadow.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from replicator.core._arns import ArnScope, rewrite_policy_document, scope_of_arn
from replicator.core._ops import Conflict, Plan, RegisterCertificateWithoutCA
from replicator.core._plan_security import target_status
from replicator.core._state import (
    CertificateState,
    PolicyState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
    canonical_json,
)

if TYPE_CHECKING:
    from replicator.core._plan import Mode

__all__ = [
    "IN_SYNC",
    "NEUTRAL_SCOPE",
    "UNSETTLED",
    "Direction",
    "Toward",
    "Verdict",
    "activation_guard",
    "failback_guard",
    "fingerprint",
    "guard",
    "judge",
    "target_only_guard",
]

Direction = Literal["forward", "failback"]

UNSETTLED: Final = "unsettled"
"""The sync point of an object the engine's own writes just changed in the secondary
(a follow-up, journaled): equal to no fingerprint, so :func:`judge` finds the
secondary stale (the primary wins) instead of taking the side effect for a change
made there to copy back."""

NEUTRAL_SCOPE: Final = ArnScope("region", "account")
"""What policy ARNs are rewritten to before fingerprinting: equal in every region."""


def _sorted(values: frozenset[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


def _content(state: object, *, mode: Mode, scopes: tuple[ArnScope, ...]) -> object:
    """The comparable content of one kind's state (see the module docstring)."""
    match state:
        case ThingState():
            return {
                "type": state.type_name,
                "attributes": state.attributes,
                "groups": _sorted(state.groups),
                "principals": _sorted(state.principals) if mode == "complete" else None,
            }
        case ThingTypeState():
            return {
                "description": state.description,
                "searchable": list(state.searchable_attributes),
                "deprecated": state.deprecated,
            }
        case ThingGroupState():
            return {
                "parent": state.parent,
                "description": state.description,
                "attributes": state.attributes,
            }
        case CertificateState():
            # as copied: a transient status (PENDING_ACTIVATION...) becomes INACTIVE
            return {"status": target_status(state.status), "policies": sorted(state.policies)}
        case PolicyState():
            default = state.default
            if default is None:
                return {"default": None}
            own = scope_of_arn(state.arn) if state.arn else None
            document = default.document
            for scope in dict.fromkeys((*((own,) if own else ()), *scopes)):
                # every region's own ARNs, so that a document naming the other region
                # on purpose (which the copy cannot tell from its own) compares equal
                document = rewrite_policy_document(state.name, document, scope, NEUTRAL_SCOPE)
            return {"default": document}
    raise TypeError(f"no fingerprint for {type(state).__name__}")


def fingerprint(state: object, *, mode: Mode, scopes: tuple[ArnScope, ...] = ()) -> str | None:
    """A region-neutral digest of a registry object's replicated content; None when absent.

    Args:
        state: a thing, type, group, certificate or policy state, or None.
        mode: ``complete`` (a thing's certificates count) or ``jitr``.
        scopes: both regions' ARN scopes (region and account): a policy's ARNs in
            any of them, and in its own ARN's, are rewritten to a neutral scope.

    Raises:
        PolicyDocumentError: a policy's default document does not parse.
    """
    if state is None:
        return None
    text = canonical_json(_content(state, mode=mode, scopes=scopes))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


Toward = Literal["primary", "secondary"]
"""The region whose content is stale: where the engine writes."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Which region is stale, and what the other direction reports when it leaves the object.

    Attributes:
        toward: the stale region (written), None when the regions agree.
        contested: why the region not written would disagree (reported as a
            conflict by the direction that does not write), None when it would not.
    """

    toward: Toward | None
    contested: str | None = None


IN_SYNC: Final = Verdict(None)


def judge(
    *, primary: str | None, secondary: str | None, synced: str | None, own_new: bool = True
) -> Verdict:
    """The three-way judgement of a registry object: its two fingerprints against its sync point.

    Args:
        primary: the primary's fingerprint (None: absent there).
        secondary: the secondary's fingerprint.
        synced: the fingerprint at the last sync point, None when there is none.
        own_new: an object only in the secondary and never synced is the
            secondary's own (a device registered there, or what it needs): copied
            to the primary. False for other kinds, which are the primary's.
    """
    if primary == secondary:
        return IN_SYNC
    if synced is None:
        if primary is None and own_new:
            return Verdict("primary", "only in the target, never synced")
        if primary is None or secondary is None:
            return Verdict("secondary")
        return Verdict("secondary", "differs between the regions and was never synced")
    if primary == synced:
        return Verdict("primary", "changed in the target since the last sync")
    if secondary != synced:
        return Verdict("secondary", "changed in both regions since the last sync")
    return Verdict("secondary")


def guard(plan: Plan, verdict: Verdict, *, writes: Toward) -> Plan:
    """The part of a direction's plan (writing ``writes``) that the judgement leaves to it.

    The forward direction's plan stands unless the primary is the stale side
    (then a conflict is reported); failback's only when it is (otherwise a
    contested object is reported, and the rest is the forward direction's).
    """
    if writes == "secondary":
        if verdict.toward != "primary" or not plan.ops:
            return plan
        return Plan(plan.key, (Conflict(plan.key, verdict.contested or ""),))
    if verdict.toward == "primary" and plan.ops:
        return plan
    if verdict.contested is None or not plan.ops:
        return Plan(plan.key)
    return Plan(plan.key, (Conflict(plan.key, verdict.contested),))


def failback_guard(
    plan: Plan,
    *,
    source: str | None,
    target: str | None,
    synced: str | None,
    copy_new: bool = True,
) -> Plan:
    """The part of a registry object's plan that the failback direction may carry out.

    Args:
        plan: the planner's plan from the source (secondary) to the target (primary).
        source: the source's fingerprint (None: absent there).
        target: the target's fingerprint.
        synced: the fingerprint at the last sync point, None when there is none.
        copy_new: copy an object that exists only in the source and was never
            synced (a device registered there, or what it needs); False for
            other kinds, which are the primary's to create and delete.
    """
    verdict = judge(primary=target, secondary=source, synced=synced, own_new=copy_new)
    return guard(plan, verdict, writes="primary")


TARGET_ONLY: Final = "only in the target and never replicated there: kept"
"""The reason reported for an object :func:`target_only_guard` keeps."""


def target_only_guard(plan: Plan, *, source: object, target: object, synced: bool) -> Plan:
    """Keep an object that exists only in the target unless it was provably replicated.

    The forward direction deletes what the source lacks only when the journal
    holds a sync point for the object (the replicator made the regions equal
    once: the source's deletion is then copied). Without one the object may be
    the target's own (a device JITR or an operator registered there during an
    outage, with its certificate and shadows, or the policy JITR attaches): it
    is kept, and reported as a conflict, unless the operator asks otherwise
    (``--delete-target-only``). Thing types are the exception: a type carries
    no device's identity or permissions, and one the primary deleted is
    deleted (deprecated, then deleted five minutes later), as failback's rule
    for types has it.

    Args:
        plan: the planner's forward plan.
        source: the source's state (None: absent).
        target: the target's state (None: absent).
        synced: whether the journal holds a sync point for the object.
    """
    if plan.key.kind == "thingType":
        return plan
    if source is None and target is not None and not synced and plan.ops:
        return Plan(plan.key, (Conflict(plan.key, TARGET_ONLY),))
    return plan


NOT_PROVEN_ACTIVE: Final = (
    "copied INACTIVE: no sync point shows it was ever active in the target, and it was"
    " registered in the source before the journal began (a lost journal?); activate it"
    " there once it is known not to have been deleted as compromised"
)
"""The reason reported for a certificate :func:`activation_guard` copies INACTIVE."""


def activation_guard(
    plan: Plan, *, source: object, synced: str | None, watching_since: float | None
) -> Plan:
    """Failback: a certificate reaches the primary ACTIVE only when the journal vouches for it.

    A certificate only in the secondary and without a sync point is a device
    registered there during the outage (copy it as it is) only if it was
    registered after the journal began watching; otherwise it may be one the
    primary deleted as compromised while the journal was lost, and it is
    registered INACTIVE and reported, never resurrected ACTIVE.

    Args:
        plan: the guarded failback plan of a certificate.
        source: the certificate in the source (the secondary).
        synced: its sync point, None when there is none.
        watching_since: when the journal recorded its first sync point, if ever.
    """
    if synced is not None or not isinstance(source, CertificateState):
        return plan
    created = source.created_epoch_s
    if watching_since is not None and created is not None and created > watching_since:
        return plan
    ops = tuple(
        RegisterCertificateWithoutCA(op.certificate_id, op.pem, "INACTIVE")
        if isinstance(op, RegisterCertificateWithoutCA) and op.status == "ACTIVE"
        else op
        for op in plan.ops
    )
    if ops == plan.ops:
        return plan
    conflict = Conflict(plan.key, NOT_PROVEN_ACTIVE)
    return Plan(plan.key, (*ops, conflict), plan.requires, plan.follow_ups)
