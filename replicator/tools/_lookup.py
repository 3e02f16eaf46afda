"""``lookup THING``: the thing, its groups, certificates, policies in each region; would it connect?

The admission verdict says what AWS IoT's door decides for a device that
connects with the thing's name as client ID and one of its certificates:
refused when the thing or certificate is missing, the certificate not
ACTIVE, or no policy (of the certificate, or of the thing's groups) allows
``iot:Connect`` on ``client/THING``. The policy decision is the local
doors' own evaluator (:mod:`replicator.tools._iot_policy`, which the
gateway re-exports), so that the tools and the doors cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replicator.tools._iot_policy import (
    CONNECT,
    ConnectionContext,
    PolicyFormatError,
    compile_policies,
    parse_policy,
)

if TYPE_CHECKING:
    from replicator.tools._registry import DeviceView

__all__ = ["Admission", "admission"]


@dataclass(frozen=True, slots=True)
class Admission:
    """Would a device be admitted, and why not."""

    admitted: bool | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"admitted": self.admitted, "reason": self.reason}


def admission(device: DeviceView | None, *, region: str, account: str | None) -> Admission:
    """The door's verdict for ``device`` connecting with client ID = its name in ``region``."""
    if device is None:
        return Admission(False, "no such thing")
    active = [c for c in device.certificates.values() if c.status == "ACTIVE"]
    if not device.certificates:
        return Admission(False, "no certificate attached")
    if not active:
        statuses = ", ".join(
            f"{c.certificate_id[:12]} {c.status}" for c in device.certificates.values()
        )
        return Admission(False, f"no ACTIVE certificate ({statuses})")
    resource = f"arn:aws:iot:{region}:{account or '*'}:client/{device.name}"
    context = ConnectionContext(
        client_id=device.name,
        thing_name=device.name,
        thing_type_name=device.type_name,
        thing_attributes=tuple(sorted(device.attributes.items())),
    )
    reasons = []
    for certificate in active:
        names = set(certificate.policies) | set(device.group_policies)
        documents = []
        for name in sorted(names):
            text = device.policies.get(name)
            if text is None:
                reasons.append(f"policy {name} does not exist")
                continue
            try:
                documents.append(parse_policy(json.loads(text) if text.strip() else text))
            except (PolicyFormatError, ValueError) as exc:
                reasons.append(f"policy {name} is not valid: {exc}")
        if not names:
            reasons.append(f"certificate {certificate.certificate_id[:12]} has no policy")
            continue
        verdict = compile_policies(documents, context).check(CONNECT, resource)
        if verdict.allowed:
            allowed_by = ", ".join(sorted(names))
            return Admission(
                True,
                f"certificate {certificate.certificate_id[:12]} ACTIVE, "
                f"iot:Connect allowed by {allowed_by}",
            )
        reasons.append(f"iot:Connect on client/{device.name}: {verdict.why}")
    return Admission(False, "; ".join(dict.fromkeys(reasons)))
