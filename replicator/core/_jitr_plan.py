"""The JITR handler's decisions, pure: which certificates to activate, and the writes it takes.

See ``_jitr.py`` for the handler that carries them out. :func:`screen` looks
at a certificate and its CA as read in the region; :func:`provision` lists the
writes, each only if still needed, activation last. The thing name comes from
the certificate's subject CN (read with ``cryptography``) or a template.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from replicator._errors import ConfigError
from replicator.core._ops import (
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreateThing,
    UpdateCertificate,
)
from replicator.core._retry import RetryPolicy
from replicator.core._state import CERTIFICATE_ID

if TYPE_CHECKING:
    from replicator.core._ops import Op
    from replicator.core._state import CertificateState

__all__ = [
    "ACTIVE",
    "JITR_TOPIC",
    "PENDING",
    "CaCertificate",
    "Eligible",
    "JitrConfig",
    "LeftAlone",
    "PrimaryCheck",
    "Refused",
    "Screening",
    "provision",
    "screen",
    "subject_common_name",
    "thing_name_for",
]

JITR_TOPIC: Final = "$aws/events/certificates/registered/+"
"""The topic filter of AWS's just-in-time registration events."""

ACTIVE: Final = "ACTIVE"
PENDING: Final = "PENDING_ACTIVATION"
THING_NAME_FIELDS: Final = frozenset({"cn", "certificate_id", "ca_certificate_id"})
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}")


PrimaryCheck = Literal["required", "best-effort"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JitrConfig:
    """What the handler provisions, for which CAs, and how it retries.

    Attributes:
        policy_name: the policy attached to every activated certificate.
        policy_document: its document (JSON), to create the policy where it is
            missing; None: the policy must exist (AttachPolicy fails until it does).
        thing_name: ``cn`` (the certificate's subject CN) or a template with
            ``{cn}``, ``{certificate_id}``, ``{ca_certificate_id}`` (``dev-{cn}``).
        allowed_cas: CA certificate ids whose certificates may be activated;
            None: every ACTIVE CA registered in the region *with auto-registration
            enabled* (a certificate registered PENDING_ACTIVATION by hand under a
            CA that does not auto-register is not the handler's to activate).
        primary_region: the primary region, whose view of a certificate is asked
            before it is activated: REVOKED or INACTIVE there is mirrored here
            instead of activating; None: no check (see ``JitrHandler``).
        primary_endpoint_url: the primary's ``iot`` endpoint (None: AWS's).
        primary_check: ``required`` (default): a certificate is activated only
            once the primary has answered that it holds it and not REVOKED or
            INACTIVE; unknown there is refused, a throttled or unreachable
            primary keeps it queued with backoff. ``best-effort``: a primary
            that does not answer at all (connection refused, reset, timed out)
            is taken for down and the certificate activated, with a log line.
        allow_rotation: attach a certificate to a thing that already has another
            ACTIVE certificate (a device rotating its key); False (default): refuse
            and report, since a CA-signed certificate carrying another device's CN
            would otherwise take over that device's thing.
        workers: certificates handled in parallel (the quota buckets pace them).
        max_attempts: attempts before a certificate that keeps failing (not
            throttling, not an outage) is dead-lettered.
        backoff: the wait before a failed certificate is tried again.
        sweep_interval_s: how often to look for pending certificates; 0: never.
        poll_s: how often to look for due work when there is none.
    """

    policy_name: str
    policy_document: str | None = None
    thing_name: str = "cn"
    allowed_cas: frozenset[str] | None = None
    primary_region: str | None = None
    primary_endpoint_url: str | None = None
    primary_check: PrimaryCheck = "required"
    allow_rotation: bool = False
    workers: int = 4
    max_attempts: int = 10
    backoff: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=1_000_000, base_s=1.0, cap_s=300.0)
    )
    sweep_interval_s: float = 300.0
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if not _POLICY_NAME.fullmatch(self.policy_name):
            raise ConfigError(f"jitr: {self.policy_name!r} is not a policy name")
        if self.policy_document is not None:
            try:
                document = json.loads(self.policy_document)
            except ValueError as exc:
                raise ConfigError(f"jitr: the policy document is not JSON: {exc}") from None
            if not isinstance(document, dict) or "Statement" not in document:
                raise ConfigError("jitr: the policy document is not a policy (no Statement)")
        _check_template(self.thing_name)
        for ca in self.allowed_cas or ():
            if not CERTIFICATE_ID.fullmatch(ca):
                raise ConfigError(f"jitr: CA id {ca!r} is not 64 lower-case hex digits")
        if self.allowed_cas is not None and not self.allowed_cas:
            raise ConfigError("jitr: an empty CA allow-list would refuse everything")
        if self.primary_check not in ("required", "best-effort"):
            raise ConfigError(
                f"jitr: primary check {self.primary_check!r} is not 'required' or 'best-effort'"
            )
        if self.primary_endpoint_url is not None and not self.primary_region:
            raise ConfigError("jitr: a primary endpoint URL needs the primary region")
        if self.workers < 1 or self.max_attempts < 1:
            raise ConfigError("jitr: workers and max_attempts must be at least 1")
        if self.sweep_interval_s < 0 or self.poll_s <= 0:
            raise ConfigError("jitr: the sweep interval must be >= 0 and the poll interval > 0")


def _check_template(template: str) -> None:
    if template == "cn":
        return
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"jitr: thing name template {template!r}: {exc}") from None
    unknown = sorted(set(fields) - THING_NAME_FIELDS)
    if unknown or not fields:
        raise ConfigError(
            f"jitr: thing name {template!r} is neither 'cn' nor a template of "
            f"{{{'}, {'.join(sorted(THING_NAME_FIELDS))}}}"
        )
    try:
        template.format(cn="x", certificate_id="0" * 64, ca_certificate_id="0" * 64)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ConfigError(f"jitr: thing name template {template!r}: {exc}") from None


# -- the pure core ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaCertificate:
    """A CA certificate registered in the region."""

    certificate_id: str
    status: str
    auto_registration: bool = False


@dataclass(frozen=True, slots=True)
class Eligible:
    """Activate the certificate, with its policy and this thing."""

    thing_name: str


@dataclass(frozen=True, slots=True)
class LeftAlone:
    """Nothing to do: the certificate is not pending (ACTIVE already, REVOKED, INACTIVE)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Not for this handler to activate: no allowed CA, or no thing name can be made."""

    reason: str


Screening = Eligible | LeftAlone | Refused


def screen(
    config: JitrConfig, certificate: CertificateState, ca: CaCertificate | None
) -> Screening:
    """Whether to activate ``certificate``, as read in the region with its CA (None: not there).

    With an allow-list the operator chose the CAs: one whose auto-registration
    is off is still accepted (the handler logs it). Without one, the CA must
    be ACTIVE *and* auto-registering.
    """
    if certificate.status != PENDING:
        return LeftAlone(f"the certificate is {certificate.status}")
    ca_id = certificate.ca_certificate_id
    if ca_id is None:
        return Refused("registered without a CA")
    if config.allowed_cas is not None and ca_id not in config.allowed_cas:
        return Refused(f"CA {ca_id} is not on the allow-list")
    if ca is None:
        return Refused(f"CA {ca_id} is not registered in the region")
    if ca.status != ACTIVE:
        return Refused(f"CA {ca_id} is {ca.status}")
    if config.allowed_cas is None and not ca.auto_registration:
        # Without an allow-list only what AWS registered just in time is ours: a
        # certificate registered by hand under any CA must not be activated.
        return Refused(f"CA {ca_id} does not have auto-registration enabled")
    name = thing_name_for(config.thing_name, certificate)
    if name is None:
        return Refused(
            f"no thing name: the certificate has no subject CN for {config.thing_name!r}"
        )
    if not _THING_NAME.fullmatch(name):
        return Refused(f"thing name {name!r} is not a valid thing name")
    return Eligible(name)


def provision(
    config: JitrConfig,
    certificate: CertificateState,
    thing_name: str,
    *,
    thing_exists: bool,
    policy_exists: bool,
) -> tuple[Op, ...]:
    """The writes that make an eligible certificate usable, activation last."""
    cert_id = certificate.certificate_id
    ops: list[Op] = []
    if config.policy_name not in certificate.policies:
        if not policy_exists and config.policy_document is not None:
            ops.append(CreatePolicy(config.policy_name, config.policy_document))
        ops.append(AttachPolicy(config.policy_name, cert_id))
    if thing_name not in (certificate.things or ()):
        if not thing_exists:
            ops.append(CreateThing(thing_name))
        ops.append(AttachThingPrincipal(thing_name, cert_id))
    if certificate.status == PENDING:
        ops.append(UpdateCertificate(cert_id, ACTIVE))
    return tuple(ops)


def thing_name_for(template: str, certificate: CertificateState) -> str | None:
    """The thing name ``template`` makes for ``certificate``; None: it needs a CN there is not."""
    cn = subject_common_name(certificate.pem)
    if template == "cn":
        return cn
    if cn is None and "{cn" in template:
        return None
    return template.format(
        cn=cn or "",
        certificate_id=certificate.certificate_id,
        ca_certificate_id=certificate.ca_certificate_id or "",
    )


def subject_common_name(pem: str) -> str | None:
    """The first subject CN of the certificate in ``pem``; None: none, or not a certificate."""
    from cryptography import x509  # noqa: PLC0415 - only where certificates are read
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        found = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not found:
        return None
    value = found[0].value
    return value if isinstance(value, str) else value.decode()
