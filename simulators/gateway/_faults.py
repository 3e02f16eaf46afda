"""The ways a region's door fails, as values: a mode and its knobs.

* ``up``: no fault.
* ``down``: refuse and reset. The listener is closed, so a new connect is
  refused (RST); live connections are reset (RST, not FIN).
* ``blackhole``: silence. Live connections carry no more bytes in either
  direction and get no RST or FIN; a new connection is accepted by the
  kernel and never answered, so its TLS handshake times out. Leaving the
  blackhole resumes the frozen connections (as TCP retransmission would) and
  closes the ones that were held silent.
* ``partial``: devices cannot reach the region while the health checker can.
  Connections whose client ID or certificate is exempt (the health checker's)
  are served; the others get ``partial_effect``: silence, as in a blackhole
  (the default: a path failure), or a reset as in ``down``. The door knows
  who a device is only after the TLS handshake, so a device sees the
  handshake succeed, then silence (or a reset) after its CONNECT.
* ``degraded``: ``latency_s`` added to every forwarded chunk in both
  directions, and a ``refuse_ratio`` share of new CONNECTs answered with
  CONNACK "server unavailable".
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from simulators._errors import GatewayError

__all__ = ["FAULT_MODES", "GatewayFault", "GatewayFaultMode", "PartialEffect"]

PartialEffect = Literal["blackhole", "down"]


class GatewayFaultMode(enum.Enum):
    """How the door treats devices."""

    UP = "up"
    DOWN = "down"
    BLACKHOLE = "blackhole"
    PARTIAL = "partial"
    DEGRADED = "degraded"


FAULT_MODES: tuple[str, ...] = tuple(m.value for m in GatewayFaultMode)
"""The mode names, for command lines."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayFault:
    """A fault mode and its parameters (those of other modes are ignored).

    Attributes:
        mode: what fails.
        latency_s: ``degraded``: the delay added to each forwarded chunk.
        refuse_ratio: ``degraded``: the share of new CONNECTs refused (0..1).
        exempt_client_ids: ``partial``: client IDs still served.
        exempt_certificate_ids: ``partial``: certificate ids still served.
        partial_effect: ``partial``: ``blackhole`` (silence) or ``down`` (reset)
            for everyone else.
    """

    mode: GatewayFaultMode = GatewayFaultMode.UP
    latency_s: float = 0.25
    refuse_ratio: float = 1.0
    exempt_client_ids: frozenset[str] = frozenset()
    exempt_certificate_ids: frozenset[str] = frozenset()
    partial_effect: PartialEffect = "blackhole"

    def __post_init__(self) -> None:
        if not math.isfinite(self.latency_s) or not 0 <= self.latency_s <= 60:
            msg = f"fault latency_s {self.latency_s!r} must be between 0 and 60 seconds"
            raise GatewayError(msg)
        if not math.isfinite(self.refuse_ratio) or not 0 <= self.refuse_ratio <= 1:
            msg = f"fault refuse_ratio {self.refuse_ratio!r} must be between 0 and 1"
            raise GatewayError(msg)
        if self.partial_effect not in ("blackhole", "down"):
            msg = f"fault partial_effect {self.partial_effect!r}: use blackhole or down"
            raise GatewayError(msg)

    @classmethod
    def of(
        cls, value: GatewayFault | GatewayFaultMode | str, *, base: GatewayFault
    ) -> GatewayFault:
        """``value`` as a fault; a bare mode takes its knobs from ``base``.

        Raises:
            GatewayError: an unknown mode name.
        """
        if isinstance(value, GatewayFault):
            return value
        if isinstance(value, str):
            try:
                value = GatewayFaultMode(value)
            except ValueError:
                choices = ", ".join(FAULT_MODES)
                msg = f"unknown fault mode {value!r}: use one of {choices}"
                raise GatewayError(msg) from None
        return replace(base, mode=value)

    def exempts(self, client_id: str | None, certificate_id: str | None) -> bool:
        """Whether ``partial`` still serves this client ID or certificate."""
        return (client_id is not None and client_id in self.exempt_client_ids) or (
            certificate_id is not None and certificate_id in self.exempt_certificate_ids
        )

    def as_dict(self) -> dict[str, Any]:
        """The fault as JSON: the mode and the knobs that apply to it."""
        data: dict[str, Any] = {"mode": self.mode.value}
        if self.mode is GatewayFaultMode.DEGRADED:
            data |= {"latency_s": self.latency_s, "refuse_ratio": self.refuse_ratio}
        elif self.mode is GatewayFaultMode.PARTIAL:
            data |= {
                "partial_effect": self.partial_effect,
                "exempt_client_ids": sorted(self.exempt_client_ids),
                "exempt_certificate_ids": sorted(self.exempt_certificate_ids),
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: GatewayFault) -> GatewayFault:
        """Parse :meth:`as_dict`'s form (absent knobs come from ``base``).

        Raises:
            GatewayError: an unknown mode, or a knob of the wrong type or range.
        """
        fault = cls.of(str(data.get("mode")), base=base)
        try:
            changes: dict[str, Any] = {}
            if "latency_s" in data:
                changes["latency_s"] = float(data["latency_s"])
            if "refuse_ratio" in data:
                changes["refuse_ratio"] = float(data["refuse_ratio"])
            if "partial_effect" in data:
                changes["partial_effect"] = str(data["partial_effect"])
            for key in ("exempt_client_ids", "exempt_certificate_ids"):
                if key in data:
                    if not isinstance(data[key], list):
                        msg = f"{key} must be a list of strings"
                        raise GatewayError(msg)
                    changes[key] = frozenset(str(v) for v in data[key])
        except (TypeError, ValueError) as exc:
            raise GatewayError(f"bad fault {data!r}: {exc}") from exc
        return replace(fault, **changes)
