"""The door's decision on a CONNECT: registry view + quotas + fault in, a decision out. Pure.

Theory of operation. After the TLS handshake (the client certificate chains
to the fleet CA or a registered CA, checked by TLS itself) and the CONNECT,
:func:`decide` goes down this list and stops at the first rule that applies:

1. An MQTT level AWS does not speak (3.1): CONNACK "unacceptable protocol".
2. The fault: ``down`` resets (a connection that slipped in before the
   listener closed); ``blackhole`` holds it silent; ``partial`` holds (or
   resets) all but the exempt; ``degraded`` refuses a share of CONNECTs with
   CONNACK "server unavailable".
3. The CONNECT quotas: every CONNECT that gets this far takes a token from
   the account's bucket (``account_rate`` per second, burst the same, AWS's
   default 500) and one from its client ID's bucket (1 per second). One that
   finds either empty is throttled and takes nothing.
4. The certificate: unknown to the region but signed by a registered ACTIVE
   CA with auto-registration on: JITR (register it PENDING_ACTIVATION,
   publish the event, drop the connection). Unknown otherwise, or not
   ACTIVE: refused.
5. SNI: a certificate registered without a CA must come with SNI (AWS's
   multi-account registration rule), else the connection is dropped.
6. Authorization. With ``authorization="policies"`` (the default, as AWS
   IoT) the policies that apply to the certificate (attached to it, and to
   the groups of the thing its client ID names) must allow ``iot:Connect``
   on ``client/<client ID>`` in this region's ARN; the decision carries the
   bound policies, by which the door then checks every PUBLISH, SUBSCRIBE
   and delivery. ``thing`` is the old global rule: the client ID must be a
   thing attached to the certificate; ``any`` admits every client ID. With
   either of those nothing after the CONNECT is checked.

How a refusal looks, as AWS IoT does it: to an MQTT 3.1.1 client the
connection is closed without a CONNACK (3.1.1 has no code for "throttled",
and AWS sends none for "not authorized" either); an MQTT 5 client gets a
CONNACK with the reason code (0x87 not authorized, 0x97 quota exceeded),
then the close. ``refusal="connack"`` answers 3.1.1 clients with CONNACK 5
(not authorized) or 3 (server unavailable) instead, for tests that want to
tell refusals apart. Faults and unsupported levels always get their CONNACK.

Every decision but admit carries a reason, the key the gateway counts it under.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from simulators.gateway._authorizers import AuthorizerCache
from simulators.gateway._faults import GatewayFault, GatewayFaultMode
from simulators.gateway._mqtt import MQTT_5, ConnackOutcome, ConnectPacket
from simulators.gateway._policy import CONNECT
from simulators.gateway._registry import ACTIVE

if TYPE_CHECKING:
    from cryptography import x509

    from simulators.gateway._policy import Authorizer
    from simulators.gateway._registry import RegistryView

__all__ = [
    "AdmissionPolicy",
    "ConnectAttempt",
    "ConnectQuotas",
    "Decision",
    "Verdict",
    "decide",
]

Authorization = Literal["policies", "thing", "any"]
Refusal = Literal["close", "connack"]


class Verdict(enum.Enum):
    """What the gateway does with the connection."""

    ADMIT = "admit"  # splice it to the broker
    REFUSE = "refuse"  # answer (CONNACK or nothing), then close
    JITR = "jitr"  # register the certificate PENDING_ACTIVATION, then close
    HOLD = "hold"  # never answer; read and discard
    RESET = "reset"  # close with RST


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one CONNECT.

    Attributes:
        verdict: what to do.
        reason: the counter key (None for an admit).
        connack: the CONNACK to send before closing, None to send none.
        ca_certificate_id: for JITR, the CA that signed the certificate.
        authorizer: for an admit by policies, the connection's bound policies.
    """

    verdict: Verdict
    reason: str | None = None
    connack: ConnackOutcome | None = None
    ca_certificate_id: str | None = None
    authorizer: Authorizer | None = None


ADMIT = Decision(Verdict.ADMIT)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionPolicy:
    """The door's rules that are not in the registry.

    Attributes:
        authorization: ``policies`` (the certificate's IoT policies authorize
            CONNECT, PUBLISH, SUBSCRIBE and delivery, as AWS IoT does), ``thing``
            (only: the client ID must be a thing attached to the certificate) or
            ``any`` (every client ID, nothing checked).
        require_sni: drop certificates registered without a CA that come without SNI.
        refusal: ``close`` (AWS: no CONNACK for 3.1.1) or ``connack``.
    """

    authorization: Authorization = "policies"
    require_sni: bool = True
    refusal: Refusal = "close"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectAttempt:
    """One device's CONNECT, after its TLS handshake.

    Attributes:
        certificate_id: SHA-256 of its certificate's DER, hex.
        certificate: the parsed certificate (read only when the region does not know it).
        packet: the CONNECT.
        sni: the server name it sent, None if none.
    """

    certificate_id: str
    certificate: x509.Certificate
    packet: ConnectPacket
    sni: str | None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def available(self, rate: float, burst: float, now: float) -> float:
        return min(burst, self.tokens + max(0.0, now - self.updated) * rate)


class ConnectQuotas:
    """The per-account and per-client-ID CONNECT token buckets. Time is passed in.

    Args:
        account_rate: CONNECTs per second for the account (burst the same).
        client_id_rate: CONNECTs per second per client ID (burst one).
    """

    def __init__(self, *, account_rate: float = 500.0, client_id_rate: float = 1.0) -> None:
        if account_rate <= 0 or client_id_rate <= 0:
            msg = "CONNECT rates must be positive"
            raise ValueError(msg)
        self.account_rate = account_rate
        self.client_id_rate = client_id_rate
        self._account_burst = max(1.0, account_rate)
        self._account: _Bucket | None = None
        self._clients: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return (
            f"ConnectQuotas(account_rate={self.account_rate:g}, "
            f"client_id_rate={self.client_id_rate:g}, client_ids={len(self._clients)})"
        )

    def take(self, client_id: str, now: float) -> str | None:
        """Take a token from both buckets; the throttling reason if either is empty."""
        account = self._account or _Bucket(self._account_burst, now)
        client = self._clients.get(client_id) or _Bucket(1.0, now)
        account_left = account.available(self.account_rate, self._account_burst, now)
        client_left = client.available(self.client_id_rate, 1.0, now)
        if account_left < 1.0:
            return "throttled_account"
        if client_left < 1.0:
            return "throttled_client_id"
        self._account = _Bucket(account_left - 1.0, max(account.updated, now))
        self._clients[client_id] = _Bucket(client_left - 1.0, max(client.updated, now))
        return None

    def prune(self, now: float) -> int:
        """Forget client IDs whose bucket is full again (as good as new); how many."""
        full = [
            client_id
            for client_id, bucket in self._clients.items()
            if bucket.available(self.client_id_rate, 1.0, now) >= 1.0
        ]
        for client_id in full:
            del self._clients[client_id]
        return len(full)


def decide(  # noqa: PLR0917 - the pure core: every input is explicit
    attempt: ConnectAttempt,
    view: RegistryView,
    quotas: ConnectQuotas,
    fault: GatewayFault,
    policy: AdmissionPolicy,
    now: float,
    roll: float,
    authorizers: AuthorizerCache | None = None,
) -> Decision:
    """The door's decision on ``attempt`` (see the module's theory of operation).

    Args:
        attempt: the CONNECT and its certificate.
        view: the region's registry.
        quotas: the CONNECT buckets (a token is taken when the CONNECT gets past them).
        fault: the fault in force.
        policy: client-ID rule, SNI rule, refusal style.
        now: the clock reading, seconds.
        roll: a uniform random number in [0, 1), for ``degraded``'s refuse ratio.
        authorizers: the bound policies kept from earlier CONNECTs (a fresh cache if None).
    """
    packet = attempt.packet
    if not packet.supported:
        return Decision(Verdict.REFUSE, "unsupported_protocol", ConnackOutcome.UNSUPPORTED_PROTOCOL)
    faulted = _fault_decision(attempt, fault, roll)
    if faulted is not None:
        return faulted
    throttled = quotas.take(packet.client_id, now)
    if throttled is not None:
        return _refuse(throttled, ConnackOutcome.QUOTA_EXCEEDED, packet, policy)
    record = view.certificate(attempt.certificate_id)
    if record is None:
        ca = view.issuing_ca(attempt.certificate)
        if ca is not None and ca.status == ACTIVE and ca.auto_registration:
            return Decision(Verdict.JITR, "jitr", None, ca.certificate_id)
        return _refuse("certificate_unknown", ConnackOutcome.NOT_AUTHORIZED, packet, policy)
    if record.status != ACTIVE:
        reason = f"certificate_{record.status.lower()}"
        return _refuse(reason, ConnackOutcome.NOT_AUTHORIZED, packet, policy)
    if policy.require_sni and record.ca_certificate_id is None and not attempt.sni:
        return Decision(Verdict.REFUSE, "sni_missing")  # AWS drops it after the handshake
    if policy.authorization == "thing" and packet.client_id not in record.things:
        return _refuse("client_id_not_allowed", ConnackOutcome.NOT_AUTHORIZED, packet, policy)
    if policy.authorization != "policies":
        return ADMIT
    cache = authorizers if authorizers is not None else AuthorizerCache()
    authorizer = cache.get(view, record, packet.client_id, attempt.certificate)
    if not authorizer.check(CONNECT, view.arn("client", packet.client_id)).allowed:
        return _refuse("policy_connect_denied", ConnackOutcome.NOT_AUTHORIZED, packet, policy)
    return Decision(Verdict.ADMIT, authorizer=authorizer)


def _fault_decision(attempt: ConnectAttempt, fault: GatewayFault, roll: float) -> Decision | None:
    mode = fault.mode
    if mode is GatewayFaultMode.DOWN:
        return Decision(Verdict.RESET, "fault_down")
    if mode is GatewayFaultMode.BLACKHOLE:
        return Decision(Verdict.HOLD, "fault_blackhole")
    if mode is GatewayFaultMode.PARTIAL and not fault.exempts(
        attempt.packet.client_id, attempt.certificate_id
    ):
        verdict = Verdict.HOLD if fault.partial_effect == "blackhole" else Verdict.RESET
        return Decision(verdict, "fault_partial")
    if mode is GatewayFaultMode.DEGRADED and roll < fault.refuse_ratio:
        return Decision(Verdict.REFUSE, "fault_degraded", ConnackOutcome.SERVER_UNAVAILABLE)
    return None


def _refuse(
    reason: str, outcome: ConnackOutcome, packet: ConnectPacket, policy: AdmissionPolicy
) -> Decision:
    if packet.protocol_level == MQTT_5 or policy.refusal == "connack":
        return Decision(Verdict.REFUSE, reason, outcome)
    return Decision(Verdict.REFUSE, reason)
