"""``create-device`` and ``delete-devices``: one device made whole, many removed with cleanup.

A device is a key made here (never sent anywhere), a certificate (AWS's CA
signs the CSR, or a given CA signs it here and the certificate is registered
without a CA, multi-account registration), a policy attached to the
certificate, a thing with its attributes, type and groups, and the
certificate attached to the thing. Deleting detaches each certificate and
deletes it only when no other thing uses it, and each of its policies only
when no other principal does.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import ConfigError, NotFoundError, PolicyDocumentError
from replicator.aws._calls import BY_MARKER
from replicator.core._arns import ArnScope, rewrite_policy_document, scope_of_arn
from replicator.tools._keys import KeyAlgorithm, generate, write_private

if TYPE_CHECKING:
    from pathlib import Path

    from replicator.aws._adapter import Boto3Region

__all__ = [
    "DEFAULT_POLICY_NAME",
    "CreatedDevice",
    "DeleteReport",
    "create_device",
    "default_device_policy",
    "delete_thing",
    "load_policy_file",
]

DEFAULT_POLICY_NAME = "iotdr-tools-device"


def default_device_policy(region: str, account: str) -> str:
    """A device may connect as its thing, and use its own topics and shadows.

    And publish its own telemetry of the fleet drill (``iotdr/sim/<thing>/telemetry``,
    what ``iotdr sim run --target aws`` has each device send), nothing more there.
    """
    base = f"arn:aws:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{base}:client/{thing}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": [f"{base}:topic/{thing}/*", f"{base}:topic/$aws/things/{thing}/*"]},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [f"{base}:topicfilter/{thing}/*",
                          f"{base}:topicfilter/$aws/things/{thing}/*"]},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": f"{base}:topic/iotdr/sim/{thing}/telemetry"},
        ],
    }  # fmt: skip
    return json.dumps(document, sort_keys=True)


def _first_iot_scope(value: Any) -> ArnScope | None:
    if isinstance(value, str):
        scope = scope_of_arn(value)
        return scope if scope is not None and value.split(":")[2] == "iot" else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _first_iot_scope(item)
        if found is not None:
            return found
    return None


def load_policy_file(path: Path, *, region: str, account: str) -> str:
    """The policy document of ``path`` with its IoT ARNs' region (and account) set to ours.

    The ARNs are rewritten by parsing the document (never by replacing text).

    Raises:
        ConfigError: the file cannot be read, is not JSON or not a policy.
    """
    try:
        text = path.read_text()
        document = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"policy file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"policy file {path} is not JSON: {exc}") from exc
    source = _first_iot_scope(document)
    if source is None:
        source = ArnScope(region, account)
    target = ArnScope(region, account if source.account not in ("", "*") else source.account)
    try:
        return rewrite_policy_document(path.name, text, source, target)
    except PolicyDocumentError as exc:
        raise ConfigError(f"policy file {path}: {exc}") from exc


@dataclass(slots=True)
class CreatedDevice:
    """What ``create-device`` made."""

    name: str
    region: str
    certificate_id: str = ""
    certificate_arn: str = ""
    policy: str = ""
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "thingName": self.name,
            "region": self.region,
            "certificateId": self.certificate_id,
            "certificateArn": self.certificate_arn,
            "policyName": self.policy,
            "files": self.files,
        }


def _sign_with_ca(csr_pem: str, ca_cert: Path, ca_key: Path) -> str:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    try:
        issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--ca {ca_cert} / --ca-key {ca_key}: cannot be loaded: {exc}") from exc
    request = x509.load_pem_x509_csr(csr_pem.encode())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(issuer.subject)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def create_device(
    client: Boto3Region,
    name: str,
    *,
    out_dir: Path,
    attributes: dict[str, str],
    thing_type: str | None = None,
    groups: tuple[str, ...] = (),
    policy_file: Path | None = None,
    policy_name: str | None = None,
    ca: tuple[Path, Path] | None = None,
    algorithm: KeyAlgorithm = "ec",
) -> CreatedDevice:
    """Create device ``name`` in ``client``'s region and write its key files to ``out_dir``.

    Raises:
        ConfigError: a bad policy file or CA, or the key files exist already.
        RegionError: the region refused a call (a missing thing type or group...).
    """
    created = CreatedDevice(name, client.region)
    paths = {kind: out_dir / f"{name}.{kind}" for kind in ("certificate.pem", "private.key",
                                                           "public.key")}  # fmt: skip
    if paths["private.key"].exists():
        raise ConfigError(f"{paths['private.key']} exists already: not overwriting a device key")
    if policy_file is not None:  # read before anything is created: a bad file stops here
        load_policy_file(policy_file, region=client.region, account="*")
    keys = generate(name, algorithm)
    if ca is None:
        made = client.call(
            "CreateCertificateFromCsr",
            client.iot.create_certificate_from_csr,
            certificateSigningRequest=keys.csr_pem,
            setAsActive=True,
        )
        pem = str(made["certificatePem"])
    else:
        pem = _sign_with_ca(keys.csr_pem, *ca)
        made = client.call(
            "RegisterCertificateWithoutCA",
            client.iot.register_certificate_without_ca,
            certificatePem=pem,
            status="ACTIVE",
        )
    created.certificate_id = str(made["certificateId"])
    created.certificate_arn = str(made["certificateArn"])
    client.learn(created.certificate_arn)
    account = client.account_id or "*"
    if policy_file is not None:
        document = load_policy_file(policy_file, region=client.region, account=account)
        created.policy = policy_name or f"{name}-policy"
    else:
        document = default_device_policy(client.region, account)
        created.policy = policy_name or DEFAULT_POLICY_NAME
    if client.read("GetPolicy", client.iot.get_policy, policyName=created.policy) is None:
        client.call("CreatePolicy", client.iot.create_policy, policyName=created.policy,
                    policyDocument=document)  # fmt: skip
    client.call("AttachPolicy", client.iot.attach_policy, policyName=created.policy,
                target=created.certificate_arn)  # fmt: skip
    thing: dict[str, Any] = {"thingName": name}
    if thing_type:
        thing["thingTypeName"] = thing_type
    if attributes:
        thing["attributePayload"] = {"attributes": attributes}
    client.call("CreateThing", client.iot.create_thing, **thing)
    client.call("AttachThingPrincipal", client.iot.attach_thing_principal, thingName=name,
                principal=created.certificate_arn)  # fmt: skip
    for group in groups:
        client.call("AddThingToThingGroup", client.iot.add_thing_to_thing_group,
                    thingGroupName=group, thingName=name)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["certificate.pem"].write_text(pem)
    write_private(paths["private.key"], keys.private_pem)
    paths["public.key"].write_text(keys.public_pem)
    created.files = [str(p) for p in paths.values()]
    return created


@dataclass(slots=True)
class DeleteReport:
    """What ``delete-devices`` did, and what it left."""

    region: str
    matched: int = 0
    things: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    interrupted: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "region": self.region,
            "matched": self.matched,
            "deleted": {"things": self.things, "certificates": self.certificates,
                        "policies": self.policies},
            "kept": self.kept,
            "failures": self.failures,
            "interrupted": self.interrupted,
        }  # fmt: skip

    def text(self) -> str:
        """Human lines."""
        lines = [f"kept {k}" for k in self.kept]
        lines += [f"FAILED {f['thing']}: {f['error']}" for f in self.failures]
        if self.interrupted:
            lines.append(f"interrupted while deleting {self.interrupted}: it may be partly "
                         "deleted; run the same command again to finish")  # fmt: skip
        lines.append(
            f"{self.region}: matched {self.matched}, deleted {len(self.things)} things, "
            f"{len(self.certificates)} certificates, {len(self.policies)} policies; "
            f"failed {len(self.failures)}"
        )
        return "\n".join(lines)


def _delete_policy(client: Boto3Region, name: str) -> None:
    listed = client.call("ListPolicyVersions", client.iot.list_policy_versions, policyName=name)
    for version in listed.get("policyVersions") or ():
        if not version.get("isDefaultVersion"):
            client.gone_ok("DeletePolicyVersion", client.iot.delete_policy_version,
                           policyName=name, policyVersionId=version["versionId"])  # fmt: skip
    client.gone_ok("DeletePolicy", client.iot.delete_policy, policyName=name)


def _delete_certificate(client: Boto3Region, arn: str, report: DeleteReport) -> None:
    others = list(client.pages("ListPrincipalThings", client.iot.list_principal_things, "things",
                               principal=arn))  # fmt: skip
    certificate_id = arn.rsplit("/", 1)[1]
    if others:
        report.kept.append(f"certificate {certificate_id} (still attached to {', '.join(others)})")
        return
    policies = [p["policyName"] for p in client.pages(
        "ListAttachedPolicies", client.iot.list_attached_policies, "policies",
        paging=BY_MARKER, target=arn)]  # fmt: skip
    for policy in policies:
        client.gone_ok("DetachPolicy", client.iot.detach_policy, policyName=policy, target=arn)
    client.gone_ok("UpdateCertificate", client.iot.update_certificate,
                   certificateId=certificate_id, newStatus="INACTIVE")  # fmt: skip
    client.gone_ok("DeleteCertificate", client.iot.delete_certificate,
                   certificateId=certificate_id, forceDelete=True)  # fmt: skip
    report.certificates.append(certificate_id)
    for policy in policies:
        targets = list(client.pages("ListTargetsForPolicy", client.iot.list_targets_for_policy,
                                    "targets", paging=BY_MARKER, policyName=policy))  # fmt: skip
        if targets:
            kept = f"policy {policy} (still attached to other certificates)"
            if kept not in report.kept:
                report.kept.append(kept)
        else:
            _delete_policy(client, policy)
            report.policies.append(policy)


def delete_thing(client: Boto3Region, name: str, report: DeleteReport) -> None:
    """Delete thing ``name``: detach its certificates, delete what nothing else uses, the thing.

    Raises:
        RegionError: a call failed (what was done so far is in ``report``).
    """
    try:
        principals = list(client.pages("ListThingPrincipals", client.iot.list_thing_principals,
                                       "principals", thingName=name))  # fmt: skip
    except NotFoundError:
        return  # gone already
    for principal in principals:
        client.gone_ok("DetachThingPrincipal", client.iot.detach_thing_principal,
                       thingName=name, principal=principal)  # fmt: skip
    client.gone_ok("DeleteThing", client.iot.delete_thing, thingName=name)
    report.things.append(name)
    for principal in principals:
        if ":cert/" in principal:
            _delete_certificate(client, principal, report)
