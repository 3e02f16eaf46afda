"""Plans for certificates and policies (complete mode). Pure functions, no I/O.

Certificates: a certificate's id is the SHA-256 of its DER form, the same in
every region, so the target registers the source's PEM with
``RegisterCertificateWithoutCA`` and gets the same id. The status is mirrored,
never defaulted to ACTIVE: a certificate revoked or deactivated in the source
must not connect in the target. A certificate gone from the source is
detached, deactivated and deleted in the target.

Policies: the target keeps the same *documents* as the source (rewritten for
the target's region and account, see ``_arns.py``), the same default among
them, and no others. Version ids are per region and are not compared. AWS
keeps at most five versions, so versions the source no longer has are deleted
before new ones are created, and a default that must go is first replaced.
"""

from __future__ import annotations

from typing import Final

from replicator.core._arns import (
    ArnScope,
    normalize_document,
    rewrite_policy_document,
    scope_of_arn,
)
from replicator.core._ops import (
    AttachPolicy,
    Conflict,
    CreatePolicy,
    CreatePolicyVersion,
    DeleteCertificate,
    DeletePolicy,
    DeletePolicyVersion,
    DetachPolicy,
    DetachThingPrincipal,
    Op,
    Plan,
    RegisterCertificateWithoutCA,
    SetDefaultPolicyVersion,
    UpdateCertificate,
)
from replicator.core._state import CertificateState, ObjectKey, PolicyState, PolicyVersion

__all__ = [
    "MAX_POLICY_VERSIONS",
    "MIRRORED_STATUSES",
    "plan_certificate",
    "plan_mirrored_status",
    "plan_policy",
    "target_status",
]

MAX_POLICY_VERSIONS: Final = 5

# What a source status becomes in the target. RegisterCertificateWithoutCA and
# UpdateCertificate accept ACTIVE, INACTIVE and REVOKED; the transient statuses
# mean "cannot connect", which INACTIVE keeps.
_STATUS: Final = {
    "ACTIVE": "ACTIVE",
    "INACTIVE": "INACTIVE",
    "REVOKED": "REVOKED",
    "PENDING_TRANSFER": "INACTIVE",
    "REGISTER_INACTIVE": "INACTIVE",
    "PENDING_ACTIVATION": "INACTIVE",
}


def target_status(source_status: str) -> str:
    """The status the target gives a certificate that has ``source_status`` in the source."""
    return _STATUS.get(source_status, "INACTIVE")


def plan_certificate(
    certificate_id: str, source: CertificateState | None, target: CertificateState | None
) -> Plan:
    """The writes that make the target's certificate match the source's (status, policies)."""
    cert = certificate_id
    key = ObjectKey.certificate(cert)
    ops: list[Op] = []
    if source is None and target is None:
        return Plan(key)
    if source is None:
        assert target is not None
        ops.extend(DetachThingPrincipal(thing, cert) for thing in sorted(target.things or ()))
        ops.extend(DetachPolicy(policy, cert) for policy in sorted(target.policies))
        if target.status == "ACTIVE":
            ops.append(UpdateCertificate(cert, "INACTIVE"))
        ops.append(DeleteCertificate(cert))
        follow = tuple(ObjectKey.policy(p) for p in sorted(target.policies))
        return Plan(key, tuple(ops), follow_ups=follow)

    want = target_status(source.status)
    if target is None:
        ops.append(RegisterCertificateWithoutCA(cert, source.pem, want))
        have_policies: frozenset[str] = frozenset()
    else:
        have_policies = target.policies
        if target.status != want:
            if target.status == "REVOKED":
                ops.append(Conflict(key, f"revoked in the target, {source.status} in the source"))
            else:
                ops.append(UpdateCertificate(cert, want))
    added = sorted(source.policies - have_policies)
    ops.extend(AttachPolicy(policy, cert) for policy in added)
    removed = sorted(have_policies - source.policies)
    ops.extend(DetachPolicy(policy, cert) for policy in removed)
    requires = tuple(ObjectKey.policy(p) for p in added)
    follow = tuple(ObjectKey.policy(p) for p in removed)
    return Plan(key, tuple(ops), requires, follow)


MIRRORED_STATUSES: Final = frozenset({"REVOKED", "INACTIVE"})
"""The statuses JITR mode copies from the primary (never ACTIVE)."""


def plan_mirrored_status(certificate_id: str, status: str, target: CertificateState | None) -> Plan:
    """JITR mode: set the target's certificate to the source's REVOKED or INACTIVE.

    Only the status, and only toward refusal: a certificate the target lacks
    is left to its JITR handler (which asks the primary first), and a REVOKED
    one stays so (AWS cannot undo a revocation).
    """
    key = ObjectKey.certificate(certificate_id)
    if status not in MIRRORED_STATUSES:
        raise ValueError(f"only {sorted(MIRRORED_STATUSES)} are mirrored, not {status}")
    if target is None or target.status in (status, "REVOKED"):
        return Plan(key)
    return Plan(key, (UpdateCertificate(certificate_id, status),))


def _scope(state: PolicyState, fallback: ArnScope | None) -> ArnScope | None:
    return (scope_of_arn(state.arn) if state.arn else None) or fallback


def plan_policy(
    name: str,
    source: PolicyState | None,
    target: PolicyState | None,
    *,
    source_scope: ArnScope,
    target_scope: ArnScope,
) -> Plan:
    """The writes that give the target's policy the source's documents and default.

    Args:
        name: the policy's name.
        source: the policy in the source region.
        target: the policy in the target region.
        source_scope: the source's region and account (its policy ARN's, when it has one).
        target_scope: the target's region and account.

    Raises:
        PolicyDocumentError: a document does not parse (the change is dead-lettered).
    """
    key = ObjectKey.policy(name)
    if source is None and target is None:
        return Plan(key)
    if source is None:
        assert target is not None
        ops: list[Op] = [DetachPolicy(name, arn) for arn in sorted(target.targets or ())]
        ops.extend(DeletePolicyVersion(name, v.version_id) for v in _non_default(target))
        ops.append(DeletePolicy(name))
        return Plan(key, tuple(ops))
    src_scope = _scope(source, source_scope) or source_scope
    dst_scope = _scope(target, target_scope) if target is not None else target_scope
    dst_scope = dst_scope or target_scope
    default = source.default
    if default is None:
        return Plan(key, (Conflict(key, "the source policy has no default version"),))
    wanted = [
        rewrite_policy_document(name, v.document, src_scope, dst_scope) for v in source.versions
    ]
    default_doc = rewrite_policy_document(name, default.document, src_scope, dst_scope)
    wanted_set = list(dict.fromkeys(wanted))  # distinct, in source order
    if target is None:
        ops = [CreatePolicy(name, default_doc)]
        ops.extend(CreatePolicyVersion(name, doc) for doc in wanted_set if doc != default_doc)
        return Plan(key, tuple(ops))
    return Plan(key, tuple(_version_ops(name, target, wanted_set, default_doc)))


def _non_default(state: PolicyState) -> list[PolicyVersion]:
    return [v for v in state.versions if not v.is_default]


def _version_ops(name: str, target: PolicyState, wanted: list[str], default_doc: str) -> list[Op]:
    """Delete what the source lacks, create what the target lacks, then fix the default."""
    have: dict[str, PolicyVersion] = {}
    extra: list[PolicyVersion] = []
    for version in target.versions:
        doc = normalize_document(name, version.document)
        if doc in wanted and doc not in have:
            have[doc] = version
        elif version.is_default and doc in have:
            extra.append(have[doc])  # a duplicate: keep the default one
            have[doc] = version
        else:
            extra.append(version)
    missing = [doc for doc in wanted if doc not in have]
    old_default = next((v for v in target.versions if v.is_default), None)
    ops: list[Op] = [DeletePolicyVersion(name, v.version_id) for v in extra if not v.is_default]
    count = len(target.versions) - len(ops)
    if old_default is not None and old_default in extra:
        # The default must go, but AWS deletes no default version: hand the default on
        # first. A new default needs a free slot; without one, borrow a version that stays.
        if default_doc in have:
            ops.append(SetDefaultPolicyVersion(name, have[default_doc].version_id))
        else:
            if count >= MAX_POLICY_VERSIONS:
                ops.append(SetDefaultPolicyVersion(name, next(iter(have.values())).version_id))
                ops.append(DeletePolicyVersion(name, old_default.version_id))
                old_default = None
            ops.append(CreatePolicyVersion(name, default_doc, set_as_default=True))
            missing.remove(default_doc)
        if old_default is not None:
            ops.append(DeletePolicyVersion(name, old_default.version_id))
    elif default_doc in have and have[default_doc] is not old_default:
        ops.append(SetDefaultPolicyVersion(name, have[default_doc].version_id))
    ops.extend(CreatePolicyVersion(name, doc, set_as_default=doc == default_doc) for doc in missing)
    return ops
