"""The door's decision: registry, quotas, faults and rules in, one decision out (no I/O)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators import FleetPKI
from simulators._errors import GatewayError
from simulators.controlplane import DEVICE_POLICY_NAME, device_policy
from simulators.gateway import (
    AdmissionPolicy,
    ConnackOutcome,
    ConnectAttempt,
    ConnectPacket,
    ConnectQuotas,
    GatewayFault,
    GatewayFaultMode,
    RegistryView,
    Verdict,
    decide,
    snapshot_from_json,
)

if TYPE_CHECKING:
    from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
NOW = 1000.0
UP = GatewayFault()
POLICY = AdmissionPolicy()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPKI:
    return FleetPKI.create(tmp_path_factory.mktemp("admission"), common_name="jitr CA")


@pytest.fixture(scope="module")
def device(pki: FleetPKI) -> x509.Certificate:
    return pki.issue_device("dev-1").certificate


ACCOUNT = "123456789012"
DEVICE_POLICY = device_policy("us-east-1", ACCOUNT)


def view_of(
    *certificates: dict[str, object],
    cas: tuple[dict[str, object], ...] = (),
    policies: tuple[dict[str, object], ...] = (),
    things: tuple[dict[str, object], ...] = (),
    groups: tuple[dict[str, object], ...] = (),
) -> RegistryView:
    view = RegistryView("us-east-1")
    view.load(
        snapshot_from_json(
            {
                "epoch": "e",
                "revision": 1,
                "accountId": ACCOUNT,
                "certificates": list(certificates),
                "caCertificates": list(cas),
                "policies": [
                    {
                        "policyName": DEVICE_POLICY.name,
                        "defaultVersionId": "1",
                        "policyDocument": DEVICE_POLICY.document,
                    },
                    *policies,
                ],
                "things": list(things),
                "thingGroups": list(groups),
            }
        )
    )
    return view


def cert(
    cid: str = "c1", status: str = "ACTIVE", things: tuple[str, ...] = ("dev-1",),
    ca: str | None = None, policies: tuple[str, ...] = (DEVICE_POLICY_NAME,),
) -> dict[str, object]:  # fmt: skip
    return {
        "certificateId": cid,
        "status": status,
        "things": list(things),
        "caCertificateId": ca,
        "policies": list(policies),
    }


def attempt(
    device: x509.Certificate,
    *,
    cid: str = "c1",
    client_id: str = "dev-1",
    level: int = 4,
    sni: str | None = "local-ats.iot.us-east-1.iotdr.test",
) -> ConnectAttempt:
    return ConnectAttempt(
        certificate_id=cid,
        certificate=device,
        packet=ConnectPacket(level, client_id, True, 30, 40),
        sni=sni,
    )


def quotas() -> ConnectQuotas:
    return ConnectQuotas(account_rate=500, client_id_rate=1)


def run(
    device: x509.Certificate,
    view: RegistryView,
    *,
    fault: GatewayFault = UP,
    policy: AdmissionPolicy = POLICY,
    roll: float = 0.5,
    **kwargs: object,
) -> tuple[Verdict, str | None, ConnackOutcome | None]:
    decision = decide(attempt(device, **kwargs), view, quotas(), fault, policy, NOW, roll)  # type: ignore[arg-type]
    return decision.verdict, decision.reason, decision.connack


def test_an_active_certificate_with_its_thing_as_client_id_is_admitted(
    device: x509.Certificate,
) -> None:
    assert run(device, view_of(cert())) == (Verdict.ADMIT, None, None)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("INACTIVE", "certificate_inactive"),
        ("REVOKED", "certificate_revoked"),
        ("PENDING_ACTIVATION", "certificate_pending_activation"),
        ("PENDING_TRANSFER", "certificate_pending_transfer"),
        ("REGISTER_INACTIVE", "certificate_register_inactive"),
    ],
)
def test_a_certificate_that_is_not_active_is_refused(
    device: x509.Certificate, status: str, reason: str
) -> None:
    assert run(device, view_of(cert(status=status))) == (Verdict.REFUSE, reason, None)


def test_a_certificate_unknown_to_the_region_is_refused(device: x509.Certificate) -> None:
    assert run(device, view_of(cert(cid="other"))) == (
        Verdict.REFUSE,
        "certificate_unknown",
        None,
    )


@pytest.mark.parametrize(
    ("level", "style", "expected"),
    [
        (4, "close", None),  # AWS: MQTT 3.1.1 gets no CONNACK, the connection is closed
        (4, "connack", ConnackOutcome.NOT_AUTHORIZED),
        (5, "close", ConnackOutcome.NOT_AUTHORIZED),  # MQTT 5 gets its reason code
        (5, "connack", ConnackOutcome.NOT_AUTHORIZED),
    ],
)
def test_how_a_refusal_is_answered(
    device: x509.Certificate, level: int, style: str, expected: ConnackOutcome | None
) -> None:
    policy = AdmissionPolicy(refusal=style)  # type: ignore[arg-type]
    assert run(device, view_of(), policy=policy, level=level)[2] is expected


def test_the_client_id_must_be_a_thing_attached_to_the_certificate(
    device: x509.Certificate,
) -> None:
    # By the default device policy (connect as your attached thing), then by the old rule.
    view = view_of(cert(things=("dev-1", "dev-1-shadow")))
    assert run(device, view, client_id="dev-1-shadow")[0] is Verdict.ADMIT
    assert run(device, view, client_id="someone-else")[:2] == (
        Verdict.REFUSE,
        "policy_connect_denied",
    )
    assert run(device, view_of(cert(things=())))[1] == "policy_connect_denied"
    thing = AdmissionPolicy(authorization="thing")
    assert run(device, view, client_id="dev-1-shadow", policy=thing)[0] is Verdict.ADMIT
    assert run(device, view, client_id="someone-else", policy=thing)[:2] == (
        Verdict.REFUSE,
        "client_id_not_allowed",
    )
    # The old rule reads no policy: a certificate without one is admitted.
    bare = view_of(cert(policies=()))
    assert run(device, bare, policy=thing)[0] is Verdict.ADMIT
    assert run(device, bare)[:2] == (Verdict.REFUSE, "policy_connect_denied")
    anyone = AdmissionPolicy(authorization="any")
    assert run(device, view, client_id="someone-else", policy=anyone)[0] is Verdict.ADMIT


def test_sni_is_required_for_certificates_registered_without_a_ca(
    device: x509.Certificate,
) -> None:
    assert run(device, view_of(cert()), sni=None)[:2] == (Verdict.REFUSE, "sni_missing")
    assert run(device, view_of(cert(ca="ca1")), sni=None)[0] is Verdict.ADMIT
    relaxed = AdmissionPolicy(require_sni=False)
    assert run(device, view_of(cert()), sni=None, policy=relaxed)[0] is Verdict.ADMIT


def test_mqtt_3_1_is_answered_unacceptable_protocol(device: x509.Certificate) -> None:
    assert run(device, view_of(cert()), level=3) == (
        Verdict.REFUSE,
        "unsupported_protocol",
        ConnackOutcome.UNSUPPORTED_PROTOCOL,
    )


def _ca(pki: FleetPKI, *, status: str = "ACTIVE", auto: str = "ENABLE") -> dict[str, object]:
    return {
        "certificateId": "ca1",
        "status": status,
        "autoRegistrationStatus": auto,
        "certificatePem": pki.ca_path.read_text(),
    }


def test_jitr_for_an_unknown_certificate_of_a_ca_with_auto_registration(
    pki: FleetPKI, device: x509.Certificate
) -> None:
    decision = decide(attempt(device), view_of(cas=(_ca(pki),)), quotas(), UP, POLICY, NOW, 0.5)
    assert (decision.verdict, decision.reason, decision.ca_certificate_id) == (
        Verdict.JITR,
        "jitr",
        "ca1",
    )


@pytest.mark.parametrize(("status", "auto"), [("ACTIVE", "DISABLE"), ("INACTIVE", "ENABLE")])
def test_no_jitr_when_the_ca_cannot_auto_register(
    pki: FleetPKI, device: x509.Certificate, status: str, auto: str
) -> None:
    view = view_of(cas=(_ca(pki, status=status, auto=auto),))
    assert run(device, view)[:2] == (Verdict.REFUSE, "certificate_unknown")


def test_once_registered_pending_the_certificate_is_refused_not_registered_again(
    pki: FleetPKI, device: x509.Certificate
) -> None:
    view = view_of(cert(status="PENDING_ACTIVATION", ca="ca1"), cas=(_ca(pki),))
    assert run(device, view)[:2] == (Verdict.REFUSE, "certificate_pending_activation")


def test_account_quota_throttles_a_burst_and_refills(device: x509.Certificate) -> None:
    view = view_of(*(cert(cid=f"c{n}", things=(f"d{n}",)) for n in range(20)))
    buckets = ConnectQuotas(account_rate=5, client_id_rate=1)

    def one(n: int, now: float) -> str | None:
        found = decide(
            attempt(device, cid=f"c{n}", client_id=f"d{n}"), view, buckets, UP, POLICY, now, 0.5
        )
        return found.reason

    burst = [one(n, NOW) for n in range(8)]
    assert burst == [None] * 5 + ["throttled_account"] * 3
    assert one(5, NOW + 0.1) == "throttled_account"  # half a token
    assert one(5, NOW + 0.2) is None  # one token refilled
    assert [one(n, NOW + 10) for n in (6, 7)] == [None, None]


def test_a_throttled_connect_takes_no_token(device: x509.Certificate) -> None:
    buckets = ConnectQuotas(account_rate=1, client_id_rate=1)
    assert buckets.take("a", NOW) is None
    for _ in range(10):
        assert buckets.take("b", NOW + 0.5) == "throttled_account"
    assert buckets.take("b", NOW + 1.0) is None


def test_client_id_quota_is_one_per_second(device: x509.Certificate) -> None:
    view = view_of(cert())
    buckets = quotas()

    def at(now: float) -> str | None:
        return decide(attempt(device), view, buckets, UP, POLICY, now, 0.5).reason

    assert [at(NOW), at(NOW + 0.5), at(NOW + 0.99), at(NOW + 1.0), at(NOW + 1.5)] == [
        None,
        "throttled_client_id",
        "throttled_client_id",
        None,
        "throttled_client_id",
    ]


@pytest.mark.parametrize(("level", "expected"), [(4, None), (5, ConnackOutcome.QUOTA_EXCEEDED)])
def test_throttling_is_answered_as_aws_does(
    device: x509.Certificate, level: int, expected: ConnackOutcome | None
) -> None:
    buckets = quotas()
    view = view_of(cert())
    decide(attempt(device, level=level), view, buckets, UP, POLICY, NOW, 0.5)
    second = decide(attempt(device, level=level), view, buckets, UP, POLICY, NOW, 0.5)
    assert (second.verdict, second.connack) == (Verdict.REFUSE, expected)


def test_quota_prune_forgets_full_buckets_only() -> None:
    buckets = quotas()
    for name in ("a", "b", "c"):
        assert buckets.take(name, NOW) is None
    assert buckets.take("d", NOW + 1.5) is None
    assert buckets.prune(NOW + 1.5) == 3
    assert buckets.take("d", NOW + 1.6) == "throttled_client_id"


@given(st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=200))
def test_the_account_never_exceeds_rate_times_time_plus_burst(gaps: list[float]) -> None:
    buckets = ConnectQuotas(account_rate=10, client_id_rate=1000)
    now, admitted = NOW, 0
    for n, gap in enumerate(gaps):
        now += gap
        admitted += buckets.take(f"c{n}", now) is None
    assert admitted <= 10 + 10 * (now - NOW) + 1e-6


# -- faults ---------------------------------------------------------------------------------


def fault(mode: str, **knobs: object) -> GatewayFault:
    return replace(GatewayFault(mode=GatewayFaultMode(mode)), **knobs)  # type: ignore[arg-type]


def test_faults_come_before_everything_else(device: x509.Certificate) -> None:
    unknown = view_of()
    assert run(device, unknown, fault=fault("down"))[:2] == (Verdict.RESET, "fault_down")
    assert run(device, unknown, fault=fault("blackhole"))[:2] == (Verdict.HOLD, "fault_blackhole")


def test_partial_serves_only_the_exempt(device: x509.Certificate) -> None:
    view = view_of(cert(), cert(cid="hc", things=("health-checker",)))
    partial = fault("partial", exempt_client_ids=frozenset({"health-checker"}))
    assert run(device, view, fault=partial)[:2] == (Verdict.HOLD, "fault_partial")
    assert run(device, view, fault=partial, cid="hc", client_id="health-checker")[0] is (
        Verdict.ADMIT
    )
    by_certificate = fault("partial", exempt_certificate_ids=frozenset({"c1"}))
    assert run(device, view, fault=by_certificate)[0] is Verdict.ADMIT
    resetting = replace(partial, partial_effect="down")
    assert run(device, view, fault=resetting)[:2] == (Verdict.RESET, "fault_partial")


def test_degraded_refuses_its_share_with_server_unavailable(device: x509.Certificate) -> None:
    view = view_of(cert())
    half = fault("degraded", refuse_ratio=0.5)
    assert run(device, view, fault=half, roll=0.49) == (
        Verdict.REFUSE,
        "fault_degraded",
        ConnackOutcome.SERVER_UNAVAILABLE,
    )
    assert run(device, view, fault=half, roll=0.5)[0] is Verdict.ADMIT
    assert run(device, view, fault=fault("degraded", refuse_ratio=0.0), roll=0.0)[0] is (
        Verdict.ADMIT
    )


def test_fault_values_parse_and_validate() -> None:
    base = GatewayFault(latency_s=0.1, exempt_client_ids=frozenset({"hc"}))
    assert GatewayFault.of("partial", base=base).exempt_client_ids == {"hc"}
    assert GatewayFault.of(GatewayFaultMode.DEGRADED, base=base).latency_s == 0.1
    parsed = GatewayFault.from_dict({"mode": "degraded", "latency_s": 2, "refuse_ratio": 0.25},
                                    base=base)  # fmt: skip
    assert (parsed.mode, parsed.latency_s, parsed.refuse_ratio) == (
        GatewayFaultMode.DEGRADED,
        2.0,
        0.25,
    )
    assert GatewayFault.from_dict(parsed.as_dict(), base=base) == parsed
    partial = GatewayFault.of("partial", base=base)
    moved = GatewayFault.from_dict(partial.as_dict(), base=GatewayFault())  # to another process
    assert (moved.mode, moved.exempt_client_ids, moved.partial_effect) == (
        GatewayFaultMode.PARTIAL,
        frozenset({"hc"}),
        "blackhole",
    )
    for bad in ("sideways", "", "DOWN"):
        with pytest.raises(GatewayError, match="unknown fault mode"):
            GatewayFault.of(bad, base=base)
    for knobs in ({"latency_s": -1}, {"refuse_ratio": 2}, {"latency_s": "soon"},
                  {"exempt_client_ids": "hc"}, {"partial_effect": "fire"}):  # fmt: skip
        with pytest.raises(GatewayError):
            GatewayFault.from_dict({"mode": "degraded", **knobs}, base=base)


# -- purity --------------------------------------------------------------------------------

PURE = ["_admission.py", "_mqtt.py", "_registry.py", "_faults.py"]
IMPURE = {"asyncio", "socket", "ssl", "time", "random", "logging", "threading", "urllib"}


@pytest.mark.parametrize("module", PURE)
def test_the_cores_do_no_io(module: str) -> None:
    tree = ast.parse((ROOT / "simulators" / "gateway" / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IMPURE
