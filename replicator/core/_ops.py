"""Write operations on a target region: what a plan contains and the adapter executes.

Each operation is a frozen dataclass named after the AWS API it calls (its
``api`` class attribute is the name the quota table and the IAM policy use),
with the arguments that call needs and nothing region-specific beyond names
and ids: the adapter turns a certificate id into that region's ARN.
Two operations are not calls: :class:`ScheduleAt` (apply this object again no
earlier than a time, e.g. a thing type's deletion five minutes after its
deprecation) and :class:`Conflict` (a difference the replicator will not
resolve by itself, reported instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from replicator.core._state import JsonObject, ObjectKey

__all__ = [
    "AddThingToThingGroup",
    "AttachPolicy",
    "AttachThingPrincipal",
    "Conflict",
    "CreatePolicy",
    "CreatePolicyVersion",
    "CreateThing",
    "CreateThingGroup",
    "CreateThingType",
    "DeleteCertificate",
    "DeletePolicy",
    "DeletePolicyVersion",
    "DeleteThing",
    "DeleteThingGroup",
    "DeleteThingShadow",
    "DeleteThingType",
    "DeprecateThingType",
    "DetachPolicy",
    "DetachThingPrincipal",
    "Op",
    "Plan",
    "RegisterCertificateWithoutCA",
    "RemoveThingFromThingGroup",
    "ScheduleAt",
    "SetDefaultPolicyVersion",
    "UpdateCertificate",
    "UpdateThing",
    "UpdateThingGroup",
    "UpdateThingShadow",
    "describe",
]


@dataclass(frozen=True, slots=True)
class CreateThing:
    """Create a thing with its type and attributes."""

    api: ClassVar[str] = "CreateThing"
    thing_name: str
    type_name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateThing:
    """Set a thing's type or remove it; merge ``attributes`` in (an empty value removes one).

    AWS documents the empty value as the way to remove an attribute, so
    updates send only what changed, with ``merge`` true.
    """

    api: ClassVar[str] = "UpdateThing"
    thing_name: str
    attributes: dict[str, str] = field(default_factory=dict)
    type_name: str | None = None
    remove_type: bool = False


@dataclass(frozen=True, slots=True)
class DeleteThing:
    """Delete a thing (its principals detached first)."""

    api: ClassVar[str] = "DeleteThing"
    thing_name: str


@dataclass(frozen=True, slots=True)
class AttachThingPrincipal:
    """Attach a certificate to a thing."""

    api: ClassVar[str] = "AttachThingPrincipal"
    thing_name: str
    certificate_id: str


@dataclass(frozen=True, slots=True)
class DetachThingPrincipal:
    """Detach a certificate from a thing."""

    api: ClassVar[str] = "DetachThingPrincipal"
    thing_name: str
    certificate_id: str


@dataclass(frozen=True, slots=True)
class AddThingToThingGroup:
    """Add a thing to a static thing group."""

    api: ClassVar[str] = "AddThingToThingGroup"
    group_name: str
    thing_name: str


@dataclass(frozen=True, slots=True)
class RemoveThingFromThingGroup:
    """Remove a thing from a static thing group."""

    api: ClassVar[str] = "RemoveThingFromThingGroup"
    group_name: str
    thing_name: str


@dataclass(frozen=True, slots=True)
class CreateThingType:
    """Create a thing type."""

    api: ClassVar[str] = "CreateThingType"
    type_name: str
    description: str | None = None
    searchable_attributes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeprecateThingType:
    """Deprecate a thing type, or undo its deprecation (``undo``)."""

    api: ClassVar[str] = "DeprecateThingType"
    type_name: str
    undo: bool = False


@dataclass(frozen=True, slots=True)
class DeleteThingType:
    """Delete a thing type deprecated more than five minutes ago."""

    api: ClassVar[str] = "DeleteThingType"
    type_name: str


@dataclass(frozen=True, slots=True)
class CreateThingGroup:
    """Create a static thing group under ``parent``."""

    api: ClassVar[str] = "CreateThingGroup"
    group_name: str
    parent: str | None = None
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateThingGroup:
    """Set a group's description and merge ``attributes`` in (an empty value removes one)."""

    api: ClassVar[str] = "UpdateThingGroup"
    group_name: str
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteThingGroup:
    """Delete a thing group."""

    api: ClassVar[str] = "DeleteThingGroup"
    group_name: str


@dataclass(frozen=True, slots=True)
class RegisterCertificateWithoutCA:
    """Register the primary's certificate PEM, with the primary's status."""

    api: ClassVar[str] = "RegisterCertificateWithoutCA"
    certificate_id: str
    pem: str
    status: str


@dataclass(frozen=True, slots=True)
class UpdateCertificate:
    """Set a certificate's status (``INACTIVE``, ``REVOKED``, ``ACTIVE``)."""

    api: ClassVar[str] = "UpdateCertificate"
    certificate_id: str
    status: str


@dataclass(frozen=True, slots=True)
class DeleteCertificate:
    """Delete an inactive certificate that nothing is attached to."""

    api: ClassVar[str] = "DeleteCertificate"
    certificate_id: str


@dataclass(frozen=True, slots=True)
class CreatePolicy:
    """Create a policy with its first (default) document."""

    api: ClassVar[str] = "CreatePolicy"
    policy_name: str
    document: str


@dataclass(frozen=True, slots=True)
class CreatePolicyVersion:
    """Add a version to a policy, optionally as its default."""

    api: ClassVar[str] = "CreatePolicyVersion"
    policy_name: str
    document: str
    set_as_default: bool = False


@dataclass(frozen=True, slots=True)
class SetDefaultPolicyVersion:
    """Make an existing version the default."""

    api: ClassVar[str] = "SetDefaultPolicyVersion"
    policy_name: str
    version_id: str


@dataclass(frozen=True, slots=True)
class DeletePolicyVersion:
    """Delete a non-default version."""

    api: ClassVar[str] = "DeletePolicyVersion"
    policy_name: str
    version_id: str


@dataclass(frozen=True, slots=True)
class DeletePolicy:
    """Delete a policy that has only its default version and no attachments."""

    api: ClassVar[str] = "DeletePolicy"
    policy_name: str


@dataclass(frozen=True, slots=True)
class AttachPolicy:
    """Attach a policy to a certificate."""

    api: ClassVar[str] = "AttachPolicy"
    policy_name: str
    certificate_id: str


@dataclass(frozen=True, slots=True)
class DetachPolicy:
    """Detach a policy from a target (a certificate id, or an ARN)."""

    api: ClassVar[str] = "DetachPolicy"
    policy_name: str
    target: str


@dataclass(frozen=True, slots=True)
class UpdateThingShadow:
    """Write ``state`` (a patch) into a shadow, guarded by ``expected_version``.

    ``client_token`` marks the write's origin, so that the target region's
    feed does not copy it back. ``expected_version`` is the version read just
    before: a device writing in between makes the update fail (409), and the
    change is read and planned again.
    """

    api: ClassVar[str] = "UpdateThingShadow"
    thing_name: str
    shadow_name: str | None
    state: JsonObject
    client_token: str
    expected_version: int | None
    source_version: int


@dataclass(frozen=True, slots=True)
class DeleteThingShadow:
    """Delete a shadow."""

    api: ClassVar[str] = "DeleteThingShadow"
    thing_name: str
    shadow_name: str | None


@dataclass(frozen=True, slots=True)
class ScheduleAt:
    """Not a call: apply ``key`` again at ``epoch_s`` (never sleep for it)."""

    api: ClassVar[str] = ""
    key: ObjectKey
    epoch_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """Not a call: a difference left alone on purpose, reported with the reason."""

    api: ClassVar[str] = ""
    key: ObjectKey
    reason: str


Op = (
    CreateThing
    | UpdateThing
    | DeleteThing
    | AttachThingPrincipal
    | DetachThingPrincipal
    | AddThingToThingGroup
    | RemoveThingFromThingGroup
    | CreateThingType
    | DeprecateThingType
    | DeleteThingType
    | CreateThingGroup
    | UpdateThingGroup
    | DeleteThingGroup
    | RegisterCertificateWithoutCA
    | UpdateCertificate
    | DeleteCertificate
    | CreatePolicy
    | CreatePolicyVersion
    | SetDefaultPolicyVersion
    | DeletePolicyVersion
    | DeletePolicy
    | AttachPolicy
    | DetachPolicy
    | UpdateThingShadow
    | DeleteThingShadow
    | ScheduleAt
    | Conflict
)

_LONG_FIELDS = frozenset({"pem", "document", "state"})


def describe(op: Op) -> dict[str, object]:
    """The operation as a JSON-ready mapping for reports: ``op`` plus its fields (long ones cut)."""
    out: dict[str, object] = {"op": type(op).__name__}
    for name in op.__dataclass_fields__:
        value = getattr(op, name)
        if name in _LONG_FIELDS and isinstance(value, str) and len(value) > 80:
            value = value[:77] + "..."
        out[name] = str(value) if isinstance(value, ObjectKey) else value
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """What it takes to make one object in the target match the source.

    Attributes:
        key: the object.
        ops: the writes, in order (empty when the regions agree).
        requires: objects that must exist in the target before the writes
            (a thing's type, groups and certificates; a certificate's
            policies; a group's parent): the engine applies them first.
        follow_ups: objects to apply after the writes, because the writes may
            have left them unused (a detached certificate, a detached policy)
            or undone (the members of a re-created group).
    """

    key: ObjectKey
    ops: tuple[Op, ...] = ()
    requires: tuple[ObjectKey, ...] = ()
    follow_ups: tuple[ObjectKey, ...] = ()

    @property
    def writes(self) -> tuple[Op, ...]:
        """The operations that call the target (not :class:`ScheduleAt` or :class:`Conflict`)."""
        return tuple(op for op in self.ops if op.api)

    @property
    def in_sync(self) -> bool:
        """Whether the regions agree on this object (no writes, no conflict)."""
        return not self.ops
