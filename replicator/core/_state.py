"""What the replicator replicates: object keys and each kind's state in one region.

Plain frozen dataclasses, no boto3: the adapter (``aws/_adapter.py``) fills them from a
region, the planner (``_plan.py``) compares two of them, the in-memory region
(``simulators/_memory_region.py``) holds them. ``None`` stands for "does not exist".

An :class:`ObjectKey` names one replicated object; its string form
(``thing/pump-1``, ``shadow/pump-1`` for a classic shadow,
``shadow/pump-1/cfg`` for a named one) is the journal's primary key. Thing,
group, type and policy names and shadow names cannot contain ``/``, so the
form is unambiguous.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = [
    "CERTIFICATE_ID",
    "CERTIFICATE_STATUSES",
    "CertificateState",
    "JsonObject",
    "Kind",
    "ObjectKey",
    "PolicyState",
    "PolicyVersion",
    "ShadowState",
    "ThingGroupState",
    "ThingState",
    "ThingTypeState",
    "canonical_json",
]

JsonObject = dict[str, Any]

Kind = Literal["thingType", "thingGroup", "policy", "certificate", "thing", "shadow"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
"""Every kind, in dependency order: what a later kind refers to comes first."""

CERTIFICATE_ID: Final = re.compile(r"[0-9a-f]{64}")
"""A certificate's (or CA certificate's) id: 64 lower-case hex digits (``fullmatch`` it)."""

CERTIFICATE_STATUSES: Final = frozenset(
    {"ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"}
)


def canonical_json(value: object) -> str:
    """Compact JSON with sorted keys: equal documents give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """One replicated object.

    Attributes:
        kind: what it is.
        name: the thing, type, group or policy name, or the certificate id; for
            a shadow, its thing's name.
        shadow: a named shadow's name; None for the classic shadow and other kinds.
    """

    kind: Kind
    name: str
    shadow: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown object kind {self.kind!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"{self.kind} name {self.name!r} is empty or contains '/'")
        if self.shadow is not None and (self.kind != "shadow" or not self.shadow):
            raise ValueError(f"a shadow name belongs to a shadow key, not {self.kind}")
        if self.shadow is not None and "/" in self.shadow:
            raise ValueError(f"shadow name {self.shadow!r} contains '/'")

    def __str__(self) -> str:
        if self.shadow is not None:
            return f"{self.kind}/{self.name}/{self.shadow}"
        return f"{self.kind}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ObjectKey:
        """The key of :meth:`__str__`'s form.

        Raises:
            ValueError: not such a form.
        """
        parts = text.split("/")
        if len(parts) == 2:
            return cls(parts[0], parts[1])  # type: ignore[arg-type]
        if len(parts) == 3 and parts[0] == "shadow":
            return cls("shadow", parts[1], parts[2])
        raise ValueError(f"{text!r} is not an object key (kind/name)")

    @classmethod
    def thing(cls, name: str) -> ObjectKey:
        """A thing's key."""
        return cls("thing", name)

    @classmethod
    def thing_type(cls, name: str) -> ObjectKey:
        """A thing type's key."""
        return cls("thingType", name)

    @classmethod
    def thing_group(cls, name: str) -> ObjectKey:
        """A thing group's key."""
        return cls("thingGroup", name)

    @classmethod
    def certificate(cls, certificate_id: str) -> ObjectKey:
        """A certificate's key."""
        return cls("certificate", certificate_id)

    @classmethod
    def policy(cls, name: str) -> ObjectKey:
        """A policy's key."""
        return cls("policy", name)

    @classmethod
    def for_shadow(cls, thing: str, shadow: str | None = None) -> ObjectKey:
        """A shadow's key: ``shadow`` None for the classic shadow."""
        return cls("shadow", thing, shadow)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingState:
    """A thing in one region.

    Attributes:
        name: the thing's name.
        type_name: its thing type, or None.
        attributes: its attributes (AWS stores no empty values).
        principals: ids of the certificates attached to it; None when not read
            (JITR mode, where certificates are the secondary's own business).
        groups: the static thing groups that list it directly; None when not read.
        version: the registry's version number (informational: per region).
    """

    name: str
    type_name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    principals: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingTypeState:
    """A thing type in one region.

    Attributes:
        name: the type's name.
        description: ``thingTypeDescription``.
        searchable_attributes: ``searchableAttributes``.
        deprecated: whether it is deprecated.
        deprecation_epoch_s: when it was deprecated (epoch seconds), while deprecated.
    """

    name: str
    description: str | None = None
    searchable_attributes: tuple[str, ...] = ()
    deprecated: bool = False
    deprecation_epoch_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ThingGroupState:
    """A static thing group in one region.

    Attributes:
        name: the group's name.
        parent: its parent group's name, or None for a root group.
        description: ``thingGroupDescription``.
        attributes: its attributes.
        members: the things it lists directly; None when not read.
        children: its child groups; None when not read.
    """

    name: str
    parent: str | None = None
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    members: frozenset[str] | None = None
    children: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateState:
    """A device certificate in one region; its id is the SHA-256 of its DER form in every region.

    Attributes:
        certificate_id: the id.
        pem: the certificate, PEM.
        status: ``ACTIVE``, ``INACTIVE``, ``REVOKED``...
        arn: its ARN in this region.
        policies: names of the policies attached to it.
        things: names of the things it is attached to; None when not read.
        ca_certificate_id: the CA it was registered with, None without one.
        created_epoch_s: when it was registered in this region, if known (not
            compared: regions register a copy at different times).
    """

    certificate_id: str
    pem: str
    status: str
    arn: str = ""
    policies: frozenset[str] = frozenset()
    things: frozenset[str] | None = None
    ca_certificate_id: str | None = None
    created_epoch_s: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion:
    """One version of a policy: its id in its region and its document (JSON text)."""

    version_id: str
    document: str
    is_default: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyState:
    """A policy in one region, with every version it keeps (AWS keeps at most five).

    Attributes:
        name: the policy's name.
        arn: its ARN in this region (gives the region's account for ARN rewriting).
        versions: its versions, the default among them.
        targets: ARNs of the principals and groups it is attached to; None when not read.
    """

    name: str
    arn: str = ""
    versions: tuple[PolicyVersion, ...] = ()
    targets: frozenset[str] | None = None

    @property
    def default(self) -> PolicyVersion | None:
        """The default version."""
        return next((v for v in self.versions if v.is_default), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowState:
    """A classic or named shadow in one region.

    Attributes:
        thing: the thing's name.
        name: the named shadow's name, None for the classic shadow.
        version: the document's version in this region.
        desired: ``state.desired``, None when absent.
        reported: ``state.reported``, None when absent.
        updated_epoch_s: the newest leaf timestamp in ``metadata`` (0 when unknown).
    """

    thing: str
    name: str | None = None
    version: int
    desired: JsonObject | None = None
    reported: JsonObject | None = None
    updated_epoch_s: float = 0.0

    def same_content(self, other: ShadowState) -> bool:
        """Whether both hold the same desired and reported state (versions aside)."""
        return canonical_json([self.desired, self.reported]) == canonical_json(
            [other.desired, other.reported]
        )
