"""The JITR handler: the pure screen and provision, the handler over an in-memory region, retries.

The region is :class:`InMemoryRegion` (AWS's rules for certificates, things and
policies) with the CA calls added and failures injected; time is a fake wall
clock that the tests advance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from device_agent.cli import main
from device_agent.testing import FakeClock
from replicator import jitr_lambda
from replicator._errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    InvalidRequestError,
    RegionUnavailableError,
    ReplicatorError,
    ThrottledError,
    UnreachableError,
)
from replicator.aws._iam import JITR_PRIMARY_ACTIONS, PolicyRequest, policy_document
from replicator.core._jitr_plan import (
    CaCertificate,
    Eligible,
    JitrConfig,
    LeftAlone,
    Refused,
    provision,
    screen,
    subject_common_name,
    thing_name_for,
)
from replicator.core._ops import (
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreateThing,
    Op,
    UpdateCertificate,
)
from replicator.core._state import CertificateState, ObjectKey, ThingState
from replicator.jitr_lambda import JitrIncompleteError, config_from_env
from replicator.runtime._host import run_jitr_service
from replicator.runtime._jitr import JitrHandler
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import RetryPolicy
from simulators import InMemoryRegion

if TYPE_CHECKING:
    from collections.abc import Iterator

    from replicator.core._region import RegionApi
    from replicator.core._state import (
        Kind,
        PolicyState,
        ShadowState,
        ThingGroupState,
        ThingTypeState,
    )

EAST, WEST = "us-east-1", "us-west-2"
POLICY = "device-policy"
DOCUMENT = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
)


# -- certificates --------------------------------------------------------------------------------


def _name(cn: str | None, extra: list[x509.NameAttribute[Any]] | None = None) -> x509.Name:
    attributes = list(extra or [])
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


@dataclass
class CA:
    """A CA that signs device certificates (EC, or RSA for the DER walker's sake)."""

    cn: str = "jitr CA"
    algorithm: str = "ec"
    key: Any = None
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        self.key = (
            ec.generate_private_key(ec.SECP256R1())
            if self.algorithm == "ec"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        self.cert = self._sign(_name(self.cn), self.key.public_key(), ca=True)

    @property
    def certificate_id(self) -> str:
        assert self.cert is not None
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def _sign(self, subject: x509.Name, public_key: Any, *, ca: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(self.cn))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        return builder.sign(self.key, hashes.SHA256())

    def issue(
        self, cn: str | None, *, extra: list[x509.NameAttribute[Any]] | None = None
    ) -> tuple[str, str]:
        """A device certificate: (certificate id, PEM)."""
        device_key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(cn, extra), device_key.public_key(), ca=False)
        der = cert.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest(), cert.public_bytes(
            serialization.Encoding.PEM
        ).decode()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return CA("another CA")


# -- the region ----------------------------------------------------------------------------------


class NotAsked:
    """The rest of :class:`RegionApi`: the handler never calls these on the fakes below."""

    @property
    def account_id(self) -> str | None:
        return None

    def _never(self, name: str) -> AssertionError:
        return AssertionError(f"the JITR handler called {name}")

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        raise self._never("read_certificate")

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        raise self._never("read_thing")

    def read_thing_type(self, name: str) -> ThingTypeState | None:
        raise self._never("read_thing_type")

    def read_thing_group(self, name: str, *, members: bool) -> ThingGroupState | None:
        raise self._never("read_thing_group")

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        raise self._never("read_policy")

    def read_shadow(self, thing: str, shadow: str | None) -> ShadowState | None:
        raise self._never("read_shadow")

    def list_names(self, kind: Kind) -> Iterator[str]:
        raise self._never("list_names")

    def list_named_shadows(self, thing: str) -> Iterator[str]:
        raise self._never("list_named_shadows")

    def execute(self, op: Op) -> int | None:
        raise self._never("execute")

    def certificate_status(self, certificate_id: str) -> str | None:
        raise self._never("certificate_status")

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        raise self._never("read_ca_certificate")

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        raise self._never("list_ca_certificates")

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        raise self._never("list_certificates_by_ca")


@dataclass
class MemoryJitrRegion(NotAsked):
    """InMemoryRegion plus registered CAs, with failures injected before any call."""

    memory: InMemoryRegion = field(default_factory=lambda: InMemoryRegion(WEST))
    cas: dict[str, CaCertificate] = field(default_factory=dict)
    failures: list[ReplicatorError] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)  # only these calls fail (empty: all)
    calls: list[str] = field(default_factory=list)

    @property
    def region(self) -> str:
        return self.memory.region

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures and (not self.fail_on or name in self.fail_on):
            raise self.failures.pop(0)

    def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
        self._call("DescribeCertificate")
        return self.memory.read_certificate(certificate_id, things=things)

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        self._call("DescribeThing")
        return self.memory.read_thing(name, principals=principals)

    def read_policy(self, name: str, *, targets: bool) -> PolicyState | None:
        self._call("GetPolicy")
        return self.memory.read_policy(name, targets=targets)

    def execute(self, op: Op) -> int | None:
        self._call(op.api)
        return self.memory.execute(op)

    def read_ca_certificate(self, ca_certificate_id: str) -> CaCertificate | None:
        self._call("DescribeCACertificate")
        return self.cas.get(ca_certificate_id)

    def list_ca_certificates(self) -> Iterator[CaCertificate]:
        self._call("ListCACertificates")
        return iter(list(self.cas.values()))

    def list_certificates_by_ca(self, ca_certificate_id: str) -> Iterator[tuple[str, str]]:
        self._call("ListCertificatesByCA")
        return iter(
            [
                (c.certificate_id, c.status)
                for c in self.memory.certificates.values()
                if c.ca_certificate_id == ca_certificate_id
            ]
        )

    # -- what AWS does on a device's first connect -----------------------------------------

    def register_ca(
        self, ca: CA, status: str = "ACTIVE", *, auto_registration: bool = True
    ) -> None:
        self.cas[ca.certificate_id] = CaCertificate(ca.certificate_id, status, auto_registration)

    def jitr(self, ca: CA, cn: str | None, status: str = "PENDING_ACTIVATION") -> str:
        cert_id, pem = ca.issue(cn)
        self.memory.certificates[cert_id] = CertificateState(
            certificate_id=cert_id,
            pem=pem,
            status=status,
            arn=self.memory.arn("cert", cert_id),
            ca_certificate_id=ca.certificate_id,
        )
        return cert_id

    def status(self, cert_id: str) -> str:
        return self.memory.certificates[cert_id].status

    def writes(self) -> list[str]:
        return [c for c in self.calls if not c.startswith(("Describe", "List", "Get"))]


@dataclass
class FakePrimary(NotAsked):
    """The primary's certificates, by id: their status; failures injected before a call."""

    statuses: dict[str, str] = field(default_factory=dict)
    failures: list[ReplicatorError] = field(default_factory=list)
    calls: int = 0

    @property
    def region(self) -> str:
        return EAST

    def certificate_status(self, certificate_id: str) -> str | None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.statuses.get(certificate_id)


@dataclass
class Rig:
    region: MemoryJitrRegion
    journal: Journal
    handler: JitrHandler
    wall: FakeClock

    def claim(self) -> Any:
        claims = self.journal.claim(now=self.wall.time(), limit=10)
        assert len(claims) == 1, claims
        return claims[0]

    def row(self, cert_id: str) -> tuple[str, int, str | None] | None:
        return self.journal.state_of(ObjectKey.certificate(cert_id))


def rig(
    region: MemoryJitrRegion | None = None, primary: FakePrimary | None = None, **overrides: Any
) -> Rig:
    settings: dict[str, Any] = {
        "policy_name": POLICY,
        "policy_document": DOCUMENT,
        "max_attempts": 3,
        "backoff": RetryPolicy(max_attempts=1_000_000, base_s=1.0, cap_s=30.0),
        "poll_s": 0.01,
        **overrides,
    }
    region = region or MemoryJitrRegion()
    journal = Journal(":memory:", queue="jitr")
    wall = FakeClock(epoch=1_700_000_000.0)
    handler = JitrHandler(region, journal, JitrConfig(**settings), primary=primary, wall=wall.time)
    return Rig(region, journal, handler, wall)


# -- the subject CN, without cryptography --------------------------------------------------------


@pytest.mark.parametrize(
    ("cn", "extra"),
    [
        ("sensor-1", []),
        ("Ünïcode-Gerät", []),
        ("x" * 64, [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]),
        (
            "with-country",
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
            ],
        ),
    ],
)
def test_the_subject_cn_is_read_from_the_der(
    ca: CA, cn: str, extra: list[x509.NameAttribute[Any]]
) -> None:
    _, pem = ca.issue(cn, extra=extra)
    assert subject_common_name(pem) == cn


def test_the_subject_cn_of_an_rsa_certificate_and_none_without_one() -> None:
    rsa_ca = CA("rsa CA", algorithm="rsa")
    assert subject_common_name(rsa_ca.issue("rsa-device")[1]) == "rsa-device"
    assert subject_common_name(rsa_ca.issue(None)[1]) is None
    assert rsa_ca.cert is not None
    ca_pem = rsa_ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    assert subject_common_name(ca_pem) == "rsa CA"  # the subject, not the issuer


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----",
    ],
)
def test_what_is_not_a_certificate_has_no_cn(pem: str) -> None:
    assert subject_common_name(pem) is None


def test_thing_name_templates(ca: CA) -> None:
    cert_id, pem = ca.issue("pump-7")
    cert = CertificateState(
        certificate_id=cert_id, pem=pem, status="PENDING_ACTIVATION", ca_certificate_id="c" * 64
    )
    assert thing_name_for("cn", cert) == "pump-7"
    assert thing_name_for("dev-{cn}", cert) == "dev-pump-7"
    assert thing_name_for("{certificate_id}", cert) == cert_id
    assert thing_name_for("{ca_certificate_id:.8}-{cn}", cert) == "cccccccc-pump-7"
    no_cn = CertificateState(certificate_id=cert_id, pem=ca.issue(None)[1], status="PENDING")
    assert thing_name_for("cn", no_cn) is None
    assert thing_name_for("x-{cn}", no_cn) is None
    assert thing_name_for("{certificate_id}", no_cn) == cert_id


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_name": "bad name"}, "is not a policy name"),
        ({"policy_document": "{"}, "not JSON"),
        ({"policy_document": "[]"}, "not a policy"),
        ({"thing_name": "fixed"}, "neither 'cn' nor a template"),
        ({"thing_name": "{serial}"}, "neither 'cn' nor a template"),
        ({"thing_name": "{cn.upper}"}, "neither 'cn' nor a template"),
        ({"thing_name": "{cn"}, "thing name template"),
        ({"allowed_cas": frozenset({"ABC"})}, "64 lower-case hex"),
        ({"allowed_cas": frozenset()}, "empty CA allow-list"),
        ({"workers": 0}, "at least 1"),
        ({"sweep_interval_s": -1.0}, "sweep interval"),
    ],
)
def test_bad_configuration_is_one_config_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JitrConfig(**{"policy_name": POLICY, **overrides})


# -- the screen ----------------------------------------------------------------------------------


def _cert(ca: CA, cn: str | None, status: str = "PENDING_ACTIVATION") -> CertificateState:
    cert_id, pem = ca.issue(cn)
    return CertificateState(
        certificate_id=cert_id, pem=pem, status=status, ca_certificate_id=ca.certificate_id
    )


@pytest.mark.parametrize("status", ["ACTIVE", "REVOKED", "INACTIVE", "PENDING_TRANSFER"])
def test_only_a_pending_certificate_is_eligible(ca: CA, status: str) -> None:
    config = JitrConfig(policy_name=POLICY)
    registered = CaCertificate(ca.certificate_id, "ACTIVE", True)
    assert screen(config, _cert(ca, "d", status), registered) == LeftAlone(
        f"the certificate is {status}"
    )


def test_the_ca_decides(ca: CA, other_ca: CA) -> None:
    config = JitrConfig(policy_name=POLICY, allowed_cas=frozenset({ca.certificate_id}))
    mine = CaCertificate(ca.certificate_id, "ACTIVE", True)
    theirs = CaCertificate(other_ca.certificate_id, "ACTIVE", True)
    assert screen(config, _cert(ca, "d-1"), mine) == Eligible("d-1")
    refused = screen(config, _cert(other_ca, "d-2"), theirs)
    assert isinstance(refused, Refused)
    assert "not on the allow-list" in refused.reason
    assert screen(config, _cert(ca, "d-3"), None) == Refused(
        f"CA {ca.certificate_id} is not registered in the region"
    )
    inactive = CaCertificate(ca.certificate_id, "INACTIVE", True)
    assert screen(config, _cert(ca, "d-4"), inactive) == Refused(
        f"CA {ca.certificate_id} is INACTIVE"
    )
    without_ca = CertificateState(certificate_id="e" * 64, pem="", status="PENDING_ACTIVATION")
    assert screen(config, without_ca, None) == Refused("registered without a CA")
    # No allow-list: any ACTIVE CA registered in the region.
    assert screen(JitrConfig(policy_name=POLICY), _cert(other_ca, "d-5"), theirs) == Eligible("d-5")


def test_a_thing_name_that_cannot_be_made_is_refused(ca: CA) -> None:
    config = JitrConfig(policy_name=POLICY)
    registered = CaCertificate(ca.certificate_id, "ACTIVE", True)
    assert isinstance(screen(config, _cert(ca, None), registered), Refused)
    bad = screen(config, _cert(ca, "has spaces"), registered)
    assert bad == Refused("thing name 'has spaces' is not a valid thing name")
    templated = JitrConfig(policy_name=POLICY, thing_name="{certificate_id}")
    cert = _cert(ca, None)
    assert screen(templated, cert, registered) == Eligible(cert.certificate_id)


# -- provision -----------------------------------------------------------------------------------


def test_provision_orders_the_writes_and_activates_last(ca: CA) -> None:
    cert = _cert(ca, "d")
    cid = cert.certificate_id
    config = JitrConfig(policy_name=POLICY, policy_document=DOCUMENT)
    assert provision(config, cert, "d", thing_exists=False, policy_exists=False) == (
        CreatePolicy(POLICY, DOCUMENT),
        AttachPolicy(POLICY, cid),
        CreateThing("d"),
        AttachThingPrincipal("d", cid),
        UpdateCertificate(cid, "ACTIVE"),
    )
    assert provision(config, cert, "d", thing_exists=True, policy_exists=True) == (
        AttachPolicy(POLICY, cid),
        AttachThingPrincipal("d", cid),
        UpdateCertificate(cid, "ACTIVE"),
    )
    without_document = JitrConfig(policy_name=POLICY)
    assert provision(without_document, cert, "d", thing_exists=True, policy_exists=False)[0] == (
        AttachPolicy(POLICY, cid)
    )
    done_before = CertificateState(
        certificate_id=cid,
        pem=cert.pem,
        status="PENDING_ACTIVATION",
        policies=frozenset({POLICY}),
        things=frozenset({"d"}),
    )
    assert provision(config, done_before, "d", thing_exists=True, policy_exists=True) == (
        UpdateCertificate(cid, "ACTIVE"),
    )


# -- the handler ---------------------------------------------------------------------------------


def test_a_pending_certificate_is_activated_with_its_policy_and_thing(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "sensor-1")
    assert r.handler.handle(cid) == "activated"
    memory = r.region.memory
    assert memory.certificates[cid].status == "ACTIVE"
    assert memory.certificates[cid].policies == frozenset({POLICY})
    assert memory.things["sensor-1"].principals == frozenset({cid})
    assert r.region.writes() == [
        "CreatePolicy",
        "AttachPolicy",
        "CreateThing",
        "AttachThingPrincipal",
        "UpdateCertificate",
    ]
    # The same event again: nothing more to write.
    assert r.handler.handle(cid) == "left_alone"
    assert len(r.region.writes()) == 5
    # The next certificate reuses the policy without reading it again.
    second = r.region.jitr(ca, "sensor-2")
    r.region.calls.clear()
    assert r.handler.handle(second) == "activated"
    assert "GetPolicy" not in r.region.calls
    assert r.region.writes() == [
        "AttachPolicy",
        "CreateThing",
        "AttachThingPrincipal",
        "UpdateCertificate",
    ]


def test_a_replicated_thing_is_attached_not_created(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    r.region.memory.execute(CreateThing("pump-1", attributes={"site": "b"}))
    cid = r.region.jitr(ca, "pump-1")
    assert r.handler.handle(cid) == "activated"
    assert "CreateThing" not in r.region.writes()
    assert r.region.memory.things["pump-1"].attributes == {"site": "b"}
    assert r.region.memory.things["pump-1"].principals == frozenset({cid})


def test_a_thing_created_meanwhile_counts_as_created(ca: CA) -> None:
    class Racing(MemoryJitrRegion):
        def execute(self, op: Op) -> int | None:
            if isinstance(op, CreateThing):  # another worker was quicker
                self.memory.execute(op)
                raise ConflictError("exists", region=WEST, api=op.api)
            return super().execute(op)

    r = rig(Racing())
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "pump-2")
    assert r.handler.handle(cid) == "activated"
    assert r.region.status(cid) == "ACTIVE"


def test_revoked_and_inactive_certificates_are_never_activated(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    revoked = r.region.jitr(ca, "gone-1", status="REVOKED")
    inactive = r.region.jitr(ca, "off-1", status="INACTIVE")
    r.handler.accept(revoked, ca.certificate_id)
    r.handler.accept(inactive, ca.certificate_id)
    assert r.handler.drain() == 2
    assert r.region.status(revoked) == "REVOKED"
    assert r.region.status(inactive) == "INACTIVE"
    assert r.region.writes() == []
    assert r.handler.stats.left_alone == 2
    assert r.handler.sweep() == 0  # not pending: not swept either


def test_a_certificate_of_a_ca_not_allowed_is_refused_with_one_line(
    ca: CA, other_ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(allowed_cas=frozenset({ca.certificate_id}))
    r.region.register_ca(ca)
    r.region.register_ca(other_ca)
    cid = r.region.jitr(other_ca, "intruder")
    r.handler.accept(cid, other_ca.certificate_id)
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.process(r.claim()) == "refused"
    assert [rec.getMessage() for rec in caplog.records] == ["jitr.refused"]
    assert caplog.records[0].levelno == logging.WARNING
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    assert r.region.writes() == []
    assert r.row(cid) == ("done", 0, None)
    assert r.handler.sweep() == 0  # its CA is not swept


def test_duplicate_events_are_one_queued_certificate(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "dup-1")
    for _ in range(3):
        r.handler.accept(cid, ca.certificate_id)
    assert r.journal.counts(r.wall.time()).pending == 1
    assert r.handler.drain() == 1
    assert r.region.status(cid) == "ACTIVE"
    r.handler.accept(cid, ca.certificate_id)  # late duplicate
    assert r.handler.drain() == 1
    assert r.region.writes().count("UpdateCertificate") == 1


@pytest.mark.parametrize(
    "failure",
    [
        ThrottledError("slow down", region=WEST, api="UpdateCertificate"),
        RegionUnavailableError("down", region=WEST, api="UpdateCertificate"),
    ],
)
def test_throttling_and_outages_are_retried_with_backoff_for_as_long_as_it_takes(
    ca: CA, failure: ReplicatorError
) -> None:
    r = rig()
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "flaky-1")
    r.region.failures = [failure] * 6  # twice max_attempts
    r.region.fail_on = {"UpdateCertificate"}
    r.handler.accept(cid, ca.certificate_id)
    delays = []
    for attempt in range(6):
        assert r.handler.process(r.claim()) == "retry"
        state, attempts, reason = r.row(cid) or ("", 0, None)
        assert (state, attempts) == ("pending", attempt + 1)
        assert reason is not None
        assert type(failure).__name__ in reason
        assert r.journal.claim(now=r.wall.time(), limit=10) == []  # not due yet
        due = r.journal.counts(r.wall.time() + 3600).due
        assert due == 1
        # Jump to just after the backoff (at most the cap): bounded, so a regression
        # (a backoff past the cap, a row never due again) fails instead of hanging.
        before = r.wall.time()
        deadline = time.monotonic() + 10.0
        for _ in range(int(30.0 / 0.25) + 2):
            if r.journal.claim(now=r.wall.time(), limit=1) or time.monotonic() > deadline:
                break
            r.wall.advance(0.25)
        else:
            pytest.fail(f"attempt {attempt + 1}: not due again within the 30 s cap")
        assert time.monotonic() <= deadline, "looking for the due row took too long"
        delays.append(r.wall.time() - before)
    assert max(delays) <= 30.25
    assert r.region.status(cid) == "PENDING_ACTIVATION"  # activation is the last write
    assert r.handler.process(r.claim()) == "activated"
    assert r.region.status(cid) == "ACTIVE"
    assert r.row(cid) == ("done", 0, None)
    assert r.handler.stats.retried == 6


def test_a_missing_policy_is_retried_then_dead_lettered_and_the_certificate_stays_pending(
    ca: CA,
) -> None:
    r = rig(policy_document=None)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "nopolicy-1")
    r.handler.accept(cid, ca.certificate_id)
    results = []
    for _ in range(3):
        r.wall.advance(3600)
        results.append(r.handler.process(r.claim()))
    assert results == ["retry", "retry", "dead"]
    state, attempts, reason = r.row(cid) or ("", 0, None)
    assert (state, attempts) == ("dead", 3)
    assert reason is not None
    assert "after 3 attempts" in reason
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    # Once the policy exists, the next sweep finds the certificate again.
    r.region.memory.execute(CreatePolicy(POLICY, DOCUMENT))
    assert r.handler.sweep() == 1
    assert r.handler.drain() == 1
    assert r.region.status(cid) == "ACTIVE"


def test_an_invalid_request_is_dead_lettered_at_once(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "bad-1")
    r.region.failures = [InvalidRequestError("malformed", region=WEST, api="CreatePolicy")]
    r.region.fail_on = {"CreatePolicy"}
    r.handler.accept(cid, ca.certificate_id)
    assert r.handler.process(r.claim()) == "dead"


def test_access_denied_stops_and_keeps_the_certificate_queued(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "denied-1")
    r.region.failures = [AccessDeniedError(region=WEST, api="UpdateCertificate")]
    r.region.fail_on = {"UpdateCertificate"}
    r.handler.accept(cid, ca.certificate_id)
    with pytest.raises(AccessDeniedError, match="iot:UpdateCertificate"):
        r.handler.process(r.claim())
    assert (r.row(cid) or ("",))[0] == "pending"


def test_a_deleted_certificate_is_gone(ca: CA) -> None:
    r = rig()
    r.handler.accept("f" * 64, ca.certificate_id)
    assert r.handler.process(r.claim()) == "gone"


# -- the sweep -----------------------------------------------------------------------------------


def test_the_sweep_queues_the_pending_certificates_of_active_allowed_cas(
    ca: CA, other_ca: CA
) -> None:
    third = CA("inactive CA")
    r = rig()
    r.region.register_ca(ca)
    r.region.register_ca(other_ca)
    r.region.register_ca(third, status="INACTIVE")
    pending = [r.region.jitr(ca, "s-1"), r.region.jitr(other_ca, "s-2")]
    r.region.jitr(ca, "s-3", status="ACTIVE")
    r.region.jitr(ca, "s-4", status="REVOKED")
    r.region.jitr(third, "s-5")
    assert r.handler.sweep() == 2
    assert r.handler.drain() == 2
    assert [r.region.status(c) for c in pending] == ["ACTIVE", "ACTIVE"]
    assert r.handler.sweep() == 0

    allow = rig(allowed_cas=frozenset({ca.certificate_id}))
    allow.region.register_ca(ca)
    allow.region.register_ca(other_ca)
    mine, theirs = allow.region.jitr(ca, "a-1"), allow.region.jitr(other_ca, "a-2")
    assert allow.handler.sweep() == 1
    allow.handler.drain()
    assert (allow.region.status(mine), allow.region.status(theirs)) == (
        "ACTIVE",
        "PENDING_ACTIVATION",
    )
    assert "ListCACertificates" not in allow.region.calls


def test_run_sweeps_at_once_and_handles_what_it_queued(ca: CA) -> None:
    r = rig(sweep_interval_s=3600.0)
    r.region.register_ca(ca)
    cids = [r.region.jitr(ca, f"run-{n}") for n in range(5)]
    stop = threading.Event()
    runner = threading.Thread(target=r.handler.run, args=(stop,))
    runner.start()
    try:
        for _ in range(500):
            if all(r.region.status(c) == "ACTIVE" for c in cids):
                break
            stop.wait(0.01)
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()
    assert [r.region.status(c) for c in cids] == ["ACTIVE"] * 5
    assert r.handler.stats.sweeps == 1


def test_run_stops_on_access_denied(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    r.region.jitr(ca, "run-denied")
    r.region.failures = [AccessDeniedError(region=WEST, api="UpdateCertificate")]
    r.region.fail_on = {"UpdateCertificate"}
    stop = threading.Event()
    with pytest.raises(AccessDeniedError):
        r.handler.run(stop)
    assert stop.is_set()


def test_a_failed_sweep_is_counted_and_tried_again_soon(ca: CA) -> None:
    r = rig(sweep_interval_s=3600.0)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "later-1")
    r.region.failures = [RegionUnavailableError("down", region=WEST, api="ListCACertificates")]
    r.region.fail_on = {"ListCACertificates"}
    stop = threading.Event()
    runner = threading.Thread(target=r.handler.run, args=(stop,))
    runner.start()
    try:
        # Deadlines, not iteration counts: a slow runner must not advance the wall
        # clock before the failed sweep has set the next one.
        deadline = time.monotonic() + 10.0
        while not r.handler.stats.sweep_failures and time.monotonic() < deadline:
            stop.wait(0.01)
        assert r.handler.stats.sweep_failures == 1
        # The next sweep is due within the first backoff, not the interval. The
        # failed sweep sets it just after counting the failure: move the clock in
        # small steps (not one jump that could land before it is set).
        started = r.wall.time()
        deadline = time.monotonic() + 10.0
        while r.region.status(cid) != "ACTIVE" and time.monotonic() < deadline:
            r.wall.advance(min(0.25, started + 10.0 - r.wall.time()))  # never near the interval
            stop.wait(0.01)
    finally:
        stop.set()
        runner.join(10)
    assert r.handler.stats.sweep_failures == 1
    assert r.region.status(cid) == "ACTIVE"


# -- the Lambda entry point ----------------------------------------------------------------------


def _event(cert_id: str, ca: CA) -> dict[str, Any]:
    return {
        "certificateId": cert_id,
        "caCertificateId": ca.certificate_id,
        "timestamp": 1,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": "123456789012",
        "certificateRegistrationTimestamp": 1,
    }


def handle_event(
    event: object, region: RegionApi, config: JitrConfig, *, primary: RegionApi | None = None
) -> dict[str, Any]:
    """The JITR Lambda's handling of ``event`` with a handler as ``handler`` builds it."""
    with Journal(":memory:", queue="jitr") as journal:
        handler = JitrHandler(region, journal, config, primary=primary)
        return jitr_lambda.handle_event(event, handler)


def test_the_lambda_handles_an_event_and_raises_for_lambda_to_retry(ca: CA) -> None:
    region = MemoryJitrRegion()
    region.register_ca(ca)
    config = JitrConfig(policy_name=POLICY, policy_document=DOCUMENT)
    cid = region.jitr(ca, "lambda-1")
    region.failures = [ThrottledError("slow", region=WEST, api="UpdateCertificate")]
    region.fail_on = {"UpdateCertificate"}
    with pytest.raises(ThrottledError):
        handle_event(_event(cid, ca), region, config)
    assert region.status(cid) == "PENDING_ACTIVATION"
    assert handle_event(_event(cid, ca), region, config) == {
        "certificateId": cid,
        "result": "activated",
    }
    assert handle_event(_event(cid, ca), region, config)["result"] == "left_alone"
    assert handle_event({"hello": 1}, region, config)["result"] == "ignored"
    assert handle_event(["x"], region, config)["result"] == "ignored"


def test_the_lambda_sweeps_on_a_schedule(ca: CA) -> None:
    region = MemoryJitrRegion()
    region.register_ca(ca)
    config = JitrConfig(policy_name=POLICY, policy_document=DOCUMENT)
    cids = [region.jitr(ca, f"sched-{n}") for n in range(3)]
    summary = handle_event({"source": "aws.events"}, region, config)
    assert summary["activated"] == 3
    assert all(region.status(c) == "ACTIVE" for c in cids)
    late = region.jitr(ca, "sched-late")
    region.failures = [RegionUnavailableError("down", region=WEST, api="UpdateCertificate")]
    region.fail_on = {"UpdateCertificate"}
    with pytest.raises(JitrIncompleteError, match="1 certificate"):
        handle_event({"sweep": True}, region, config)
    assert region.status(late) == "PENDING_ACTIVATION"


def test_the_lambda_configuration_from_the_environment(ca: CA) -> None:
    env = {
        "AWS_REGION": WEST,
        "IOTDR_JITR_POLICY": POLICY,
        "IOTDR_JITR_CAS": f"{ca.certificate_id}, {'d' * 64}",
        "IOTDR_JITR_THING_NAME": "dev-{cn}",
    }
    region, config = config_from_env(env)
    assert region.region == WEST
    assert region.endpoint_url is None
    assert config.allowed_cas == frozenset({ca.certificate_id, "d" * 64})
    assert config.thing_name == "dev-{cn}"
    assert config.policy_document is None
    with pytest.raises(ConfigError, match="IOTDR_JITR_POLICY"):
        config_from_env({"AWS_REGION": WEST})
    with pytest.raises(ConfigError, match="AWS_REGION"):
        config_from_env({"IOTDR_JITR_POLICY": POLICY})
    with pytest.raises(ConfigError, match="64 lower-case hex"):
        config_from_env({**env, "IOTDR_JITR_CAS": "nope"})


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def _no_jitr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "IOTDR_SECONDARY_REGION",
        "IOTDR_SECONDARY_ENDPOINT_URL",
        "IOTDR_JITR_FEED",
        "IOTDR_JITR_POLICY",
        "IOTDR_JITR_JOURNAL",
        "IOTDR_PRIMARY_REGION",
        "IOTDR_PRIMARY_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("_no_jitr_env")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "iotdr: error: --journal is required unless --once"),
        (["--once", "--thing-name", "same-for-all"], "neither 'cn' nor a template"),
        (["--once", "--ca", "xyz"], "64 lower-case hex"),
        (["--journal", "j.db", "--feed", "nohost"], "is not HOST:PORT"),
        (["--once", "--primary-endpoint-url", "http://x:1"], "needs the primary region"),
    ],
)
def test_cli_errors_are_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["replicator", "jitr", "--region", WEST, "--policy", POLICY, *extra])
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_the_event_names_the_ca_when_the_description_does_not(ca: CA, other_ca: CA) -> None:
    """moto's DescribeCertificate has no caCertificateId: the region's listing confirms the hint."""

    class Undescribed(MemoryJitrRegion):
        def read_certificate(self, certificate_id: str, *, things: bool) -> CertificateState | None:
            found = super().read_certificate(certificate_id, things=things)
            return None if found is None else replace(found, ca_certificate_id=None)

    r = rig(Undescribed())
    r.region.register_ca(ca)
    r.region.register_ca(other_ca)
    cid = r.region.jitr(ca, "hinted-1")
    assert r.handler.handle(cid) == "refused"  # no CA known: registered without one
    assert r.handler.handle(cid, other_ca.certificate_id) == "refused"  # not listed under it
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    r.handler.accept(cid, ca.certificate_id)
    assert r.handler.process(r.claim()) == "activated"
    assert r.region.status(cid) == "ACTIVE"


# -- the CA's auto-registration ------------------------------------------------------------------


def test_without_an_allow_list_the_ca_must_auto_register(ca: CA) -> None:
    config = JitrConfig(policy_name=POLICY)
    manual = CaCertificate(ca.certificate_id, "ACTIVE", auto_registration=False)
    assert screen(config, _cert(ca, "d-1"), manual) == Refused(
        f"CA {ca.certificate_id} does not have auto-registration enabled"
    )
    # With an allow-list the operator chose the CA: accepted.
    allowed = JitrConfig(policy_name=POLICY, allowed_cas=frozenset({ca.certificate_id}))
    assert screen(allowed, _cert(ca, "d-2"), manual) == Eligible("d-2")


def test_a_certificate_registered_by_hand_under_a_manual_ca_is_not_activated(
    ca: CA, other_ca: CA
) -> None:
    r = rig()
    r.region.register_ca(ca)
    r.region.register_ca(other_ca, auto_registration=False)
    by_hand = r.region.jitr(other_ca, "by-hand-1")  # PENDING_ACTIVATION, registered by hand
    jitr = r.region.jitr(ca, "jitr-1")
    assert r.handler.sweep() == 1  # the manual CA is not swept
    assert r.handler.drain() == 1
    assert r.handler.handle(by_hand, other_ca.certificate_id) == "refused"  # nor its events
    assert (r.region.status(by_hand), r.region.status(jitr)) == ("PENDING_ACTIVATION", "ACTIVE")


def test_an_allowed_ca_without_auto_registration_is_accepted_and_logged(
    other_ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(allowed_cas=frozenset({other_ca.certificate_id}))
    r.region.register_ca(other_ca, auto_registration=False)
    cid = r.region.jitr(other_ca, "chosen-1")
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.sweep() == 1
        assert r.handler.drain() == 1
    assert r.region.status(cid) == "ACTIVE"
    [line] = [rec for rec in caplog.records if rec.getMessage() == "jitr.ca_not_auto_registering"]
    assert line.levelno == logging.WARNING


# -- the status, read again right before the activation ------------------------------------------


@pytest.mark.parametrize("status", ["REVOKED", "INACTIVE"])
def test_a_certificate_changed_by_an_operator_meanwhile_is_not_activated(
    ca: CA, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    class OperatorActs(MemoryJitrRegion):
        def execute(self, op: Op) -> int | None:
            written = super().execute(op)
            if isinstance(op, AttachThingPrincipal):  # between the screen and the activation
                self.memory.execute(UpdateCertificate(op.certificate_id, status))
            return written

    r = rig(OperatorActs())
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "turned-off-1")
    r.handler.accept(cid, ca.certificate_id)
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.process(r.claim()) == "left_alone"
    assert r.region.status(cid) == status
    assert "UpdateCertificate" not in r.region.writes()
    assert r.row(cid) == ("done", 0, None)
    assert r.handler.stats.changed_meanwhile == 1
    assert r.handler.stats.activated == 0
    [line] = [rec for rec in caplog.records if rec.getMessage() == "jitr.changed_meanwhile"]
    assert line.__dict__["status"] == status


def test_a_certificate_deleted_meanwhile_is_gone(ca: CA) -> None:
    class OperatorDeletes(MemoryJitrRegion):
        def execute(self, op: Op) -> int | None:
            if isinstance(op, UpdateCertificate):
                pytest.fail("activated a deleted certificate")
            written = super().execute(op)
            if isinstance(op, AttachThingPrincipal):
                del self.memory.certificates[op.certificate_id]
            return written

    r = rig(OperatorDeletes())
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "deleted-1")
    assert r.handler.handle(cid) == "gone"


# -- the primary's view of the certificate -------------------------------------------------------


@pytest.mark.parametrize("status", ["REVOKED", "INACTIVE"])
def test_a_certificate_revoked_or_inactive_in_the_primary_is_set_so_not_activated(
    ca: CA, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FakePrimary()
    r = rig(primary=primary)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "stolen-1")
    primary.statuses[cid] = status
    r.handler.accept(cid, ca.certificate_id)
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.process(r.claim()) == "mirrored"
    assert r.region.status(cid) == status  # not left PENDING_ACTIVATION
    assert r.region.writes() == ["UpdateCertificate"]  # no policy, no thing
    assert "stolen-1" not in r.region.memory.things
    assert r.handler.stats.mirrored == 1
    assert r.handler.stats.activated == 0
    assert r.row(cid) == ("done", 0, None)
    [line] = [rec for rec in caplog.records if rec.getMessage() == "jitr.primary.refused"]
    assert (line.levelno, line.__dict__["status"]) == (logging.WARNING, status)
    assert r.handler.sweep() == 0  # no longer pending: not swept again


def test_a_certificate_the_primary_does_not_know_is_refused(
    ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: unknown in the primary (deleted there, never registered) is not activated."""
    primary = FakePrimary()
    r = rig(primary=primary, primary_check="best-effort")
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "unknown-1")
    r.handler.accept(cid, ca.certificate_id)
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.process(r.claim()) == "refused"
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    assert r.region.writes() == []
    assert r.handler.stats.refused == 1
    assert r.handler.stats.activated == 0
    [line] = [rec for rec in caplog.records if rec.getMessage() == "jitr.refused"]
    assert line.levelno == logging.WARNING
    assert "not known in the primary" in line.__dict__["reason"]


UNREACHABLE = UnreachableError("connection refused", region=EAST, api="DescribeCertificate")
DOWN_5XX = RegionUnavailableError("503", region=EAST, api="DescribeCertificate", code="")
THROTTLED = ThrottledError("slow down", region=EAST, api="DescribeCertificate")


@pytest.mark.parametrize(
    ("check", "failure"),
    [
        ("required", UNREACHABLE),
        ("required", DOWN_5XX),
        ("required", THROTTLED),
        ("best-effort", DOWN_5XX),
        ("best-effort", THROTTLED),
    ],
    ids=[
        "required-unreachable",
        "required-5xx",
        "required-throttled",
        "best-5xx",
        "best-throttled",
    ],
)
def test_a_primary_that_cannot_say_keeps_the_certificate_queued_with_backoff(
    ca: CA, check: str, failure: ReplicatorError
) -> None:
    """One throttle during a mass failover must not activate a revoked certificate."""
    primary = FakePrimary(statuses={}, failures=[failure])
    r = rig(primary=primary, primary_check=check)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "stolen-2")
    primary.statuses[cid] = "REVOKED"  # what the primary says once it answers
    r.handler.accept(cid, ca.certificate_id)
    assert r.handler.process(r.claim()) == "retry"
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    assert r.region.writes() == []
    assert (r.row(cid) or ("",))[0] == "pending"
    r.wall.advance(60.0)  # past the backoff: the primary answers now
    assert r.handler.process(r.claim()) == "mirrored"
    assert r.region.status(cid) == "REVOKED"
    assert r.handler.stats.activated == 0
    assert primary.calls == 2


def test_best_effort_activates_only_when_the_primary_does_not_answer_at_all(
    ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FakePrimary(failures=[UNREACHABLE])
    r = rig(primary=primary, primary_check="best-effort")
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "outage-1")
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.handle(cid) == "activated"
    assert r.region.status(cid) == "ACTIVE"
    assert primary.calls == 1
    assert r.handler.stats.primary_unchecked == 1
    assert "jitr.primary.unchecked" in [rec.getMessage() for rec in caplog.records]


def test_the_primary_check_is_required_by_default_and_validated() -> None:
    assert JitrConfig(policy_name=POLICY, primary_region=EAST).primary_check == "required"
    with pytest.raises(ConfigError, match="primary check"):
        JitrConfig(policy_name=POLICY, primary_check="sometimes")  # type: ignore[arg-type]


def test_a_certificate_active_in_the_primary_is_activated(ca: CA) -> None:
    primary = FakePrimary()
    r = rig(primary=primary)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "moved-1")
    primary.statuses[cid] = "ACTIVE"
    assert r.handler.handle(cid) == "activated"
    assert r.handler.stats.primary_unchecked == 0


def test_access_denied_in_the_primary_stops_rather_than_skipping_the_check(ca: CA) -> None:
    primary = FakePrimary(failures=[AccessDeniedError(region=EAST, api="DescribeCertificate")])
    r = rig(primary=primary)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "denied-2")
    r.handler.accept(cid, ca.certificate_id)
    with pytest.raises(AccessDeniedError, match="iot:DescribeCertificate"):
        r.handler.process(r.claim())
    assert r.region.status(cid) == "PENDING_ACTIVATION"
    assert (r.row(cid) or ("",))[0] == "pending"


def test_the_lambda_asks_the_primary(ca: CA) -> None:
    region = MemoryJitrRegion()
    region.register_ca(ca)
    config = JitrConfig(policy_name=POLICY, policy_document=DOCUMENT, primary_region=EAST)
    cid = region.jitr(ca, "lambda-revoked")
    primary = FakePrimary(statuses={cid: "REVOKED"})
    assert handle_event(_event(cid, ca), region, config, primary=primary) == {
        "certificateId": cid,
        "result": "mirrored",
    }
    assert region.status(cid) == "REVOKED"
    env = {
        "AWS_REGION": WEST,
        "IOTDR_JITR_POLICY": POLICY,
        "IOTDR_PRIMARY_REGION": EAST,
        "IOTDR_PRIMARY_ENDPOINT_URL": "http://127.0.0.1:5000",
    }
    _, from_env = config_from_env(env)
    assert (from_env.primary_region, from_env.primary_endpoint_url) == (
        EAST,
        "http://127.0.0.1:5000",
    )
    assert (
        config_from_env({"AWS_REGION": WEST, "IOTDR_JITR_POLICY": POLICY})[1].primary_region is None
    )


def test_a_primary_endpoint_needs_the_primary_region() -> None:
    with pytest.raises(ConfigError, match="needs the primary region"):
        JitrConfig(policy_name=POLICY, primary_endpoint_url="http://127.0.0.1:5000")


def test_the_jitr_iam_policy_reads_certificates_in_the_primary_only_when_asked() -> None:
    request = PolicyRequest(identity="jitr", secondary_region=WEST, account_id="123456789012")
    without = policy_document(request)
    assert all(s["Sid"] != "CheckThePrimary" for s in without["Statement"])
    document = policy_document(replace(request, primary_region=EAST))
    [check] = [s for s in document["Statement"] if s["Sid"] == "CheckThePrimary"]
    assert check == {
        "Sid": "CheckThePrimary",
        "Effect": "Allow",
        "Action": ["iot:DescribeCertificate"],
        "Resource": f"arn:aws:iot:{EAST}:123456789012:cert/*",
    }
    assert list(JITR_PRIMARY_ACTIONS) == ["iot:DescribeCertificate"]  # read-only
    others = [s for s in document["Statement"] if s["Sid"] != "CheckThePrimary"]
    assert all(EAST not in json.dumps(s) for s in others)


# -- the service -----------------------------------------------------------------------------------


def test_the_jitr_service_serves_health_and_its_outcomes_as_metrics(ca: CA) -> None:
    r = rig(sweep_interval_s=0.0)
    r.region.register_ca(ca)
    cid = r.region.jitr(ca, "served-1")
    r.handler.accept(cid, ca.certificate_id)
    lines: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=run_jitr_service,
        args=(r.handler, None),
        kwargs={"report": lines.append, "stop": stop, "listen": ("127.0.0.1", 0)},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while r.region.status(cid) != "ACTIVE" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.region.status(cid) == "ACTIVE"
        base = lines[0]["listen"]
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    finally:
        stop.set()
        thread.join()
    assert 'iotdr_jitr_changes_total{kind="certificate",result="activated"} 1.0' in metrics
    assert "iotdr_replicator_queue_pending" in metrics
    assert [line["event"] for line in lines] == ["jitr.started", "jitr.stopped"]


def test_the_primary_check_from_the_environment_and_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"AWS_REGION": WEST, "IOTDR_JITR_POLICY": POLICY, "IOTDR_PRIMARY_REGION": EAST}
    assert config_from_env(env)[1].primary_check == "required"
    best = config_from_env({**env, "IOTDR_JITR_PRIMARY_CHECK": "best-effort"})[1]
    assert best.primary_check == "best-effort"
    with pytest.raises(ConfigError, match="IOTDR_JITR_PRIMARY_CHECK"):
        config_from_env({**env, "IOTDR_JITR_PRIMARY_CHECK": "maybe"})
    args = ["replicator", "jitr", "--region", WEST, "--policy", POLICY, "--once"]
    code = main([*args, "--primary-region", EAST, "--primary-check", "sometimes"])
    assert code == 2
    assert "--primary-check" in capsys.readouterr().err


# -- a certificate never takes over another device's thing ---------------------------------------


def test_a_certificate_with_another_devices_cn_does_not_take_over_its_thing(
    ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig()
    r.region.register_ca(ca)
    owner = r.region.jitr(ca, "pump-1")
    assert r.handler.handle(owner) == "activated"
    intruder = r.region.jitr(ca, "pump-1")  # CA-signed, the same CN
    with caplog.at_level(logging.INFO, logger="replicator.runtime._jitr"):
        assert r.handler.handle(intruder) == "refused"
    assert r.region.status(intruder) == "PENDING_ACTIVATION"
    assert r.region.memory.things["pump-1"].principals == frozenset({owner})
    assert r.handler.stats.refused == 1
    [line] = [rec for rec in caplog.records if rec.getMessage() == "jitr.refused"]
    assert owner in line.__dict__["reason"]
    assert line.__dict__["thing"] == "pump-1"


def test_rotation_attaches_a_second_certificate_when_allowed(ca: CA) -> None:
    r = rig(allow_rotation=True)
    r.region.register_ca(ca)
    old = r.region.jitr(ca, "pump-2")
    assert r.handler.handle(old) == "activated"
    new = r.region.jitr(ca, "pump-2")
    assert r.handler.handle(new) == "activated"
    assert r.region.memory.things["pump-2"].principals == frozenset({old, new})


def test_a_thing_whose_other_certificate_is_inactive_takes_the_new_one(ca: CA) -> None:
    r = rig()
    r.region.register_ca(ca)
    old = r.region.jitr(ca, "pump-3")
    assert r.handler.handle(old) == "activated"
    r.region.memory.execute(UpdateCertificate(old, "INACTIVE"))  # retired by the operator
    new = r.region.jitr(ca, "pump-3")
    assert r.handler.handle(new) == "activated"
    assert r.region.status(new) == "ACTIVE"


def test_rotation_is_off_unless_configured() -> None:
    env = {"AWS_REGION": WEST, "IOTDR_JITR_POLICY": POLICY}
    assert config_from_env(env)[1].allow_rotation is False
    assert config_from_env({**env, "IOTDR_JITR_ALLOW_ROTATION": "true"})[1].allow_rotation


@pytest.mark.parametrize("failure", [THROTTLED, UNREACHABLE], ids=["throttled", "unreachable"])
def test_the_lambda_fails_the_invocation_rather_than_activate_unchecked(
    ca: CA, failure: ReplicatorError
) -> None:
    """Lambda retries the invocation; the certificate stays pending meanwhile."""
    region = MemoryJitrRegion()
    region.register_ca(ca)
    config = JitrConfig(policy_name=POLICY, policy_document=DOCUMENT, primary_region=EAST)
    cid = region.jitr(ca, "lambda-throttled")
    primary = FakePrimary(statuses={cid: "REVOKED"}, failures=[failure])
    with pytest.raises(type(failure)):
        handle_event(_event(cid, ca), region, config, primary=primary)
    assert region.status(cid) == "PENDING_ACTIVATION"
    assert handle_event(_event(cid, ca), region, config, primary=primary)["result"] == "mirrored"
