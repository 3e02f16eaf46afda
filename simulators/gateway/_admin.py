"""A gateway's admin endpoint, for other processes (``iotdr sim fault``, status), and its client.

HTTP with JSON on a loopback port of its own, served from the gateway's event loop:

- ``GET /status``: :meth:`RegionGateway.status`;
- ``GET /fault``: the fault in force;
- ``POST /pending`` with ``{"certificates": {"CERT_ID": "THING", ...}}``: how many
  of them the door would not admit yet (not ACTIVE, or not attached to that thing);
- ``POST /fault`` with ``{"mode": "down" | "blackhole" | "partial" | "degraded" | "up", ...}``
  (optional knobs: ``latency_s``, ``refuse_ratio``, ``partial_effect``,
  ``exempt_client_ids``, ``exempt_certificate_ids``): switch, answered once in force.

:class:`GatewayAdmin` is the synchronous client, for the CLI.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulators._errors import GatewayError
from simulators.gateway._faults import GatewayFault, GatewayFaultMode

if TYPE_CHECKING:
    from collections.abc import Mapping

    from simulators.gateway._gateway import RegionGateway
    from simulators.gateway._http import JsonHandler

__all__ = ["PENDING_CHUNK", "GatewayAdmin", "admin_handler"]

PENDING_CHUNK = 500
"""Certificates per ``POST /pending`` (each about 100 bytes of JSON)."""


def admin_handler(gateway: RegionGateway) -> JsonHandler:
    """The admin endpoint's request handler for ``gateway``."""

    async def handle(method: str, target: str, body: Any) -> tuple[int, Any]:
        path = target.split("?", 1)[0]
        if path == "/status":
            if method != "GET":
                return 405, {"message": "use GET"}
            return 200, gateway.status()
        if path == "/pending":
            if method != "POST" or not isinstance(body, dict):
                return 400, {"message": 'POST {"certificates": {"CERT_ID": "THING", ...}}'}
            wanted = body.get("certificates")
            if not isinstance(wanted, dict):
                return 400, {"message": 'POST {"certificates": {"CERT_ID": "THING", ...}}'}
            return 200, {"pending": gateway.pending({str(k): str(v) for k, v in wanted.items()})}
        if path != "/fault":
            return 404, {"message": f"no admin endpoint {path}; use /status, /fault or /pending"}
        if method == "GET":
            return 200, {"region": gateway.region, "fault": gateway.fault.as_dict()}
        if method != "POST":
            return 405, {"message": "use GET or POST"}
        if not isinstance(body, dict):
            return 400, {"message": 'send a JSON object: {"mode": "down"}'}
        try:
            fault = await gateway.set_fault(
                GatewayFault.from_dict(body, base=gateway.config.faults)
            )
        except GatewayError as exc:
            return 400, {"message": str(exc)}
        return 200, {"region": gateway.region, "fault": fault.as_dict()}

    return handle


@dataclass(frozen=True, slots=True)
class GatewayAdmin:
    """The admin endpoint of a running gateway, whoever started it.

    Attributes:
        url: the endpoint (``http://127.0.0.1:PORT``, :attr:`RegionGateway.admin_url`).
        timeout_s: how long one request may take.
    """

    url: str
    timeout_s: float = 5.0

    def set_fault(self, fault: GatewayFault | GatewayFaultMode | str) -> dict[str, Any]:
        """Switch the gateway's fault; returns it as now in force.

        Raises:
            GatewayError: an unknown mode, or the gateway is unreachable.
        """
        if isinstance(fault, GatewayFault):
            body = fault.as_dict()
        else:
            body = {"mode": fault.value if isinstance(fault, GatewayFaultMode) else fault}
        answer: dict[str, Any] = self._call("POST", "/fault", body)["fault"]
        return answer

    def fault(self) -> dict[str, Any]:
        """The fault in force."""
        answer: dict[str, Any] = self._call("GET", "/fault")["fault"]
        return answer

    def status(self) -> dict[str, Any]:
        """The gateway's status (see :meth:`RegionGateway.status`)."""
        return self._call("GET", "/status")

    def pending(self, wanted: Mapping[str, str]) -> int:
        """How many of ``wanted`` (certificate id -> thing) the gateway does not admit yet.

        Asked in chunks of :data:`PENDING_CHUNK` (a request body may be 64 KB: about 700).
        """
        items = list(wanted.items())
        return sum(
            int(self._call("POST", "/pending", {"certificates": dict(chunk)})["pending"])
            for chunk in (items[i : i + PENDING_CHUNK] for i in range(0, len(items), PENDING_CHUNK))
        )

    def _call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        if not self.url.startswith("http://"):
            raise GatewayError(f"gateway admin: {self.url!r} is not an http:// URL")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - an http:// URL, checked above
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                message = json.loads(detail).get("message", detail)
            except (ValueError, AttributeError):
                message = detail
            raise GatewayError(f"gateway at {self.url}: {message}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise GatewayError(f"gateway at {self.url} is not reachable: {exc}") from exc
