"""An AWS IoT region in memory, with the rules replication depends on: for tests, benches, fleets.

:class:`InMemoryRegion` implements :class:`~replicator.core._region.RegionApi` over
dictionaries. It refuses what AWS refuses where the planner must avoid it:
deleting a thing with principals, a certificate that is ACTIVE or attached, a
default policy version, a policy with attachments or versions, a thing type
deprecated less than five minutes ago, a sixth policy version; setting a
deprecated thing type; reviving a REVOKED certificate; a shadow update whose
``version`` is stale. Tests drive a "primary" by executing the same operations
a user would call, and check that the engine makes a "secondary" equal to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from replicator._errors import ConflictError, NotFoundError, RefusedError
from replicator.core._arns import partition_of
from replicator.core._ops import (
    AddThingToThingGroup,
    AttachPolicy,
    AttachThingPrincipal,
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
    SetDefaultPolicyVersion,
    UpdateCertificate,
    UpdateThing,
    UpdateThingGroup,
    UpdateThingShadow,
)
from replicator.core._plan import THING_TYPE_DELETE_AFTER_S
from replicator.core._plan_security import MAX_POLICY_VERSIONS
from replicator.core._state import (
    CertificateState,
    JsonObject,
    PolicyState,
    PolicyVersion,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from replicator.core._jitr_plan import CaCertificate
    from replicator.core._ops import Op
    from replicator.core._state import Kind

__all__ = ["InMemoryRegion", "merge_shadow_state"]

_T = TypeVar("_T")


def merge_shadow_state(section: JsonObject | None, patch: JsonObject | None) -> JsonObject | None:
    """AWS's merge of an update into a shadow section: null deletes, objects merge, empty goes."""
    if patch is None:
        return None
    merged = dict(section or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            child = merge_shadow_state(current if isinstance(current, dict) else None, value)
            if child:
                merged[key] = child
            else:
                merged.pop(key, None)
        else:
            merged[key] = value
    return merged or None


@dataclass
class _Policy:
    versions: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (doc, default)
    next_id: int = 1


@dataclass
class InMemoryRegion:
    """One region's registry, certificates, policies and shadows in memory.

    Attributes:
        region: the region's name.
        account_id: its account.
        clock: epoch seconds (thing type deprecation dates).
        calls: how many writes were executed, by API (tests assert minimal writes).
    """

    region: str
    account_id: str | None = "123456789012"
    clock: Callable[[], float] = field(default=lambda: 0.0, repr=False)
    things: dict[str, ThingState] = field(default_factory=dict, repr=False)
    types: dict[str, ThingTypeState] = field(default_factory=dict, repr=False)
    groups: dict[str, ThingGroupState] = field(default_factory=dict, repr=False)
    certificates: dict[str, CertificateState] = field(default_factory=dict, repr=False)
    policies: dict[str, _Policy] = field(default_factory=dict, repr=False)
    shadows: dict[tuple[str, str | None], ShadowState] = field(default_factory=dict, repr=False)
    calls: dict[str, int] = field(default_factory=dict)
    cas: dict[str, CaCertificate] = field(default_factory=dict, repr=False)
    _tombstones: dict[tuple[str, str | None], int] = field(default_factory=dict, repr=False)

    def arn(self, kind: str, name: str) -> str:
        """An ARN in this region and account."""
        return f"arn:{partition_of(self.region)}:iot:{self.region}:{self.account_id}:{kind}/{name}"

    # -- reads ------------------------------------------------------------------------------

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        """The thing with its groups, and its certificates when ``principals``."""
        thing = self.things.get(name)
        if thing is None:
            return None
        groups = frozenset(g.name for g in self.groups.values() if name in (g.members or ()))
        return replace(thing, groups=groups, principals=thing.principals if principals else None)

    def read_thing_type(self, name: str) -> ThingTypeState | None:
        """The thing type."""
        return self.types.get(name)

    def read_thing_group(self, name: str, *, members: bool) -> ThingGroupState | None:
        """The group, with its members when ``members``."""
        group = self.groups.get(name)
        if group is None:
            return None
        children = frozenset(g.name for g in self.groups.values() if g.parent == name)
        return replace(group, members=group.members if members else None, children=children)

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        """The certificate, with its things when ``things``."""
        cert = self.certificates.get(certificate_id)
        if cert is None:
            return None
        attached = frozenset(
            t.name for t in self.things.values() if certificate_id in (t.principals or ())
        )
        return replace(cert, things=attached if things else None)

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        """The policy with its versions, and its targets when ``targets``."""
        policy = self.policies.get(name)
        if policy is None:
            return None
        versions = tuple(
            PolicyVersion(version_id=vid, document=doc, is_default=default)
            for vid, (doc, default) in policy.versions.items()
        )
        attached = frozenset(c.arn for c in self.certificates.values() if name in c.policies)
        return PolicyState(
            name=name,
            arn=self.arn("policy", name),
            versions=versions,
            targets=attached if targets else None,
        )

    def read_shadow(self, thing: str, shadow: str | None) -> ShadowState | None:
        """The shadow."""
        return self.shadows.get((thing, shadow))

    def list_names(self, kind: Kind) -> Iterator[str]:
        """Every object of ``kind``."""
        tables: dict[str, dict[str, Any]] = {
            "thing": self.things,
            "thingType": self.types,
            "thingGroup": self.groups,
            "certificate": self.certificates,
            "policy": self.policies,
        }
        return iter(sorted(tables.get(kind, {})))

    def list_named_shadows(self, thing: str) -> Iterator[str]:
        """The thing's named shadows."""
        return iter(sorted(n for t, n in self.shadows if t == thing and n is not None))

    def certificate_status(self, certificate_id: str) -> str | None:
        """The certificate's status."""
        found = self.certificates.get(certificate_id)
        return None if found is None else found.status

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        """The CA registered in the region (``cas``)."""
        return self.cas.get(ca_certificate_id)

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        """Every CA registered in the region."""
        return iter(list(self.cas.values()))

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        """(id, status) of the certificates registered with the CA."""
        found = self.certificates.values()
        return iter(
            [
                (c.certificate_id, c.status)
                for c in found
                if c.ca_certificate_id == ca_certificate_id
            ]
        )

    # -- writes -----------------------------------------------------------------------------

    def execute(self, op: Op) -> int | None:  # noqa: PLR0915 - one branch per operation
        """Carry out one write with AWS's rules."""
        if not op.api:
            return None
        self.calls[op.api] = self.calls.get(op.api, 0) + 1
        match op:
            case CreateThing():
                if op.thing_name in self.things:
                    raise RefusedError("exists", region=self.region, api=op.api)
                self._usable_type(op.type_name)
                self.things[op.thing_name] = ThingState(
                    name=op.thing_name,
                    type_name=op.type_name,
                    attributes={k: v for k, v in op.attributes.items() if v},
                    principals=frozenset(),
                )
            case UpdateThing():
                thing = self._thing(op.thing_name)
                attributes = {**thing.attributes, **op.attributes}
                type_name = thing.type_name
                if op.remove_type:
                    type_name = None
                elif op.type_name is not None:
                    self._usable_type(op.type_name)
                    type_name = op.type_name
                self.things[op.thing_name] = replace(
                    thing,
                    type_name=type_name,
                    attributes={k: v for k, v in attributes.items() if v},
                )
            case DeleteThing():
                gone = self.things.get(op.thing_name)
                if gone is not None and gone.principals:
                    raise RefusedError("principals attached", region=self.region, api=op.api)
                self.things.pop(op.thing_name, None)
                for name, group in self.groups.items():
                    if op.thing_name in (group.members or ()):
                        self.groups[name] = replace(group, members=group.members - {op.thing_name})  # type: ignore[operator]
            case AttachThingPrincipal():
                thing = self._thing(op.thing_name)
                self._cert(op.certificate_id)
                self.things[op.thing_name] = replace(
                    thing, principals=(thing.principals or frozenset()) | {op.certificate_id}
                )
            case DetachThingPrincipal():
                thing = self._thing(op.thing_name)
                self.things[op.thing_name] = replace(
                    thing, principals=(thing.principals or frozenset()) - {op.certificate_id}
                )
            case AddThingToThingGroup():
                group = self._group(op.group_name)
                self._thing(op.thing_name)
                self.groups[op.group_name] = replace(
                    group, members=(group.members or frozenset()) | {op.thing_name}
                )
            case RemoveThingFromThingGroup():
                group = self._group(op.group_name)
                self.groups[op.group_name] = replace(
                    group, members=(group.members or frozenset()) - {op.thing_name}
                )
            case CreateThingType():
                if op.type_name not in self.types:
                    self.types[op.type_name] = ThingTypeState(
                        name=op.type_name,
                        description=op.description,
                        searchable_attributes=op.searchable_attributes,
                    )
            case DeprecateThingType():
                kind = self._type(op.type_name)
                self.types[op.type_name] = replace(
                    kind,
                    deprecated=not op.undo,
                    deprecation_epoch_s=None
                    if op.undo
                    else (kind.deprecation_epoch_s or self.clock()),
                )
            case DeleteThingType():
                kind = self._type(op.type_name)
                since = kind.deprecation_epoch_s
                if (
                    not kind.deprecated
                    or since is None
                    or self.clock() < since + THING_TYPE_DELETE_AFTER_S
                ):
                    raise RefusedError(
                        "not deprecated for 5 minutes", region=self.region, api=op.api
                    )
                del self.types[op.type_name]
            case CreateThingGroup():
                if op.parent is not None:
                    self._group(op.parent)
                if op.group_name not in self.groups:
                    self.groups[op.group_name] = ThingGroupState(
                        name=op.group_name,
                        parent=op.parent,
                        description=op.description,
                        attributes={k: v for k, v in op.attributes.items() if v},
                        members=frozenset(),
                    )
            case UpdateThingGroup():
                group = self._group(op.group_name)
                attributes = {**group.attributes, **op.attributes}
                self.groups[op.group_name] = replace(
                    group,
                    description=op.description,
                    attributes={k: v for k, v in attributes.items() if v},
                )
            case DeleteThingGroup():
                if any(g.parent == op.group_name for g in self.groups.values()):
                    raise RefusedError("has child groups", region=self.region, api=op.api)
                self.groups.pop(op.group_name, None)
            case RegisterCertificateWithoutCA():
                if op.certificate_id not in self.certificates:
                    self.certificates[op.certificate_id] = CertificateState(
                        certificate_id=op.certificate_id,
                        pem=op.pem,
                        status=op.status,
                        arn=self.arn("cert", op.certificate_id),
                        created_epoch_s=self.clock(),
                    )
            case UpdateCertificate():
                cert = self._cert(op.certificate_id)
                if cert.status == "REVOKED" and op.status != "REVOKED":
                    raise RefusedError("revoked", region=self.region, api=op.api)
                self.certificates[op.certificate_id] = replace(cert, status=op.status)
            case DeleteCertificate():
                cert = self._cert(op.certificate_id)
                attached = any(
                    op.certificate_id in (t.principals or ()) for t in self.things.values()
                )
                if cert.status == "ACTIVE" or cert.policies or attached:
                    raise RefusedError("active or attached", region=self.region, api=op.api)
                del self.certificates[op.certificate_id]
            case CreatePolicy():
                if op.policy_name in self.policies:
                    raise RefusedError("exists", region=self.region, api=op.api)
                policy = _Policy()
                self._add_version(policy, op.document, default=True)
                self.policies[op.policy_name] = policy
            case CreatePolicyVersion():
                policy = self._policy(op.policy_name)
                if len(policy.versions) >= MAX_POLICY_VERSIONS:
                    raise RefusedError("five versions", region=self.region, api=op.api)
                self._add_version(policy, op.document, default=op.set_as_default)
            case SetDefaultPolicyVersion():
                policy = self._policy(op.policy_name)
                if op.version_id not in policy.versions:
                    raise NotFoundError("no such version", region=self.region, api=op.api)
                policy.versions = {
                    v: (d, v == op.version_id) for v, (d, _) in policy.versions.items()
                }
            case DeletePolicyVersion():
                policy = self._policy(op.policy_name)
                found = policy.versions.get(op.version_id)
                if found is not None and found[1]:
                    raise RefusedError("default version", region=self.region, api=op.api)
                policy.versions.pop(op.version_id, None)
            case DeletePolicy():
                policy = self._policy(op.policy_name)
                in_use = any(op.policy_name in c.policies for c in self.certificates.values())
                if in_use or len(policy.versions) > 1:
                    raise RefusedError("attached or versions", region=self.region, api=op.api)
                del self.policies[op.policy_name]
            case AttachPolicy():
                self._policy(op.policy_name)
                cert = self._cert(op.certificate_id)
                self.certificates[op.certificate_id] = replace(
                    cert, policies=cert.policies | {op.policy_name}
                )
            case DetachPolicy():
                cert_id = op.target.rsplit("/", 1)[-1]
                cert = self._cert(cert_id)
                self.certificates[cert_id] = replace(
                    cert, policies=cert.policies - {op.policy_name}
                )
            case UpdateThingShadow():
                return self._update_shadow(op)
            case DeleteThingShadow():
                key = (op.thing_name, op.shadow_name)
                found_shadow = self.shadows.pop(key, None)
                if found_shadow is None:
                    raise NotFoundError("no shadow", region=self.region, api=op.api)
                self._tombstones[key] = found_shadow.version
        return None

    def _update_shadow(self, op: UpdateThingShadow) -> int:
        key = (op.thing_name, op.shadow_name)
        current = self.shadows.get(key)
        version = current.version if current is not None else self._tombstones.get(key, 0)
        if op.expected_version is not None and op.expected_version != version:
            raise ConflictError("version conflict", region=self.region, api=op.api)
        desired = current.desired if current is not None else None
        reported = current.reported if current is not None else None
        if "desired" in op.state:
            desired = merge_shadow_state(desired, op.state["desired"])
        if "reported" in op.state:
            reported = merge_shadow_state(reported, op.state["reported"])
        updated = ShadowState(
            thing=op.thing_name,
            name=op.shadow_name,
            version=version + 1,
            desired=json.loads(json.dumps(desired)),
            reported=json.loads(json.dumps(reported)),
            updated_epoch_s=self.clock(),
        )
        self.shadows[key] = updated
        return updated.version

    def _add_version(self, policy: _Policy, document: str, *, default: bool) -> None:
        vid = str(policy.next_id)
        policy.next_id += 1
        if default:
            policy.versions = {v: (d, False) for v, (d, _) in policy.versions.items()}
        policy.versions[vid] = (document, default)

    def _thing(self, name: str) -> ThingState:
        return self._found(self.things.get(name), "thing", name)

    def _type(self, name: str) -> ThingTypeState:
        return self._found(self.types.get(name), "thing type", name)

    def _usable_type(self, name: str | None) -> None:
        if name is not None and self._type(name).deprecated:
            raise RefusedError(f"thing type {name} is deprecated", region=self.region)

    def _group(self, name: str) -> ThingGroupState:
        return self._found(self.groups.get(name), "thing group", name)

    def _cert(self, certificate_id: str) -> CertificateState:
        return self._found(self.certificates.get(certificate_id), "certificate", certificate_id)

    def _policy(self, name: str) -> _Policy:
        return self._found(self.policies.get(name), "policy", name)

    def _found(self, item: _T | None, what: str, name: str) -> _T:
        if item is None:
            raise NotFoundError(f"{what} {name} not found in {self.region}", region=self.region)
        return item
