"""Where the gateway's registry view comes from: the port, and the control plane's adapter.

:class:`RegistrySource` is what the gateway needs from a region's registry:
a snapshot, the changes after a revision (a long poll), and a just-in-time
registration. :class:`ControlPlaneRegistrySource` implements it with the
local control plane's admin endpoints (``/_iotdr/regions/{region}/...``);
tests may pass any other implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from simulators._errors import GatewayError
from simulators.gateway._http import request_json, split_url
from simulators.gateway._registry import (
    CertificateRecord,
    RegistryChanges,
    RegistryFormatError,
    RegistrySnapshot,
    changes_from_json,
    snapshot_from_json,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ControlPlaneRegistrySource", "JitrRefusedError", "RegistrySource"]


class JitrRefusedError(GatewayError):
    """The region refused to register a certificate just in time (CA inactive, not its CA...)."""


class RegistrySource(Protocol):
    """A region's registry as the gateway reads it. Every method may raise :class:`GatewayError`."""

    async def snapshot(self) -> RegistrySnapshot:
        """Every certificate and CA now."""
        ...

    async def changes(self, since: int, epoch: str, wait_s: float) -> RegistryChanges:
        """What changed after revision ``since`` of ``epoch``, waiting up to ``wait_s`` for it."""
        ...

    async def register_jitr(
        self, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[CertificateRecord, bool]:
        """Register the certificate PENDING_ACTIVATION (and publish the event); is it new?

        Raises:
            JitrRefusedError: the region refuses it.
        """
        ...


class ControlPlaneRegistrySource:
    """A region's registry read from the local control plane's admin endpoints.

    Args:
        url: the control plane (``http://127.0.0.1:PORT``).
        region: the region.
        timeout_s: how long a request may take, beyond a long poll's wait.
    """

    def __init__(self, url: str, region: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.region = region
        self._host, self._port = split_url(url)
        self._timeout_s = timeout_s
        self._prefix = f"/_iotdr/regions/{region}"

    def __repr__(self) -> str:
        return f"ControlPlaneRegistrySource({self.url!r}, {self.region!r})"

    async def snapshot(self) -> RegistrySnapshot:
        """``GET .../registry``."""
        return snapshot_from_json(await self._call("GET", f"{self._prefix}/registry"))

    async def changes(self, since: int, epoch: str, wait_s: float) -> RegistryChanges:
        """``GET .../registry/changes``: a long poll of up to ``wait_s``."""
        query = urlencode({"since": since, "epoch": epoch, "wait_s": f"{wait_s:g}"})
        data = await self._call(
            "GET", f"{self._prefix}/registry/changes?{query}", timeout_s=self._timeout_s + wait_s
        )
        return changes_from_json(data)

    async def register_jitr(
        self, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[CertificateRecord, bool]:
        """``POST .../jitr``."""
        body = {"certificatePem": certificate_pem, "caCertificateId": ca_certificate_id}
        data = await self._call("POST", f"{self._prefix}/jitr", body)
        try:
            item = data["certificate"]
            record = CertificateRecord(
                certificate_id=str(item["certificateId"]),
                status=str(item["status"]),
                things=frozenset(item.get("things") or ()),
                ca_certificate_id=item.get("caCertificateId"),
            )
            return record, bool(data["registered"])
        except (KeyError, TypeError) as exc:
            raise RegistryFormatError(f"bad JITR answer: {data!r}") from exc

    async def _call(
        self, method: str, path: str, body: object = None, *, timeout_s: float | None = None
    ) -> Mapping[str, Any]:
        status, answer = await request_json(
            self._host, self._port, method, path, body, timeout_s=timeout_s or self._timeout_s
        )
        message = answer.get("message") if isinstance(answer, dict) else answer
        if path.endswith("/jitr") and status in (400, 404, 409):
            raise JitrRefusedError(f"{self.region}: JITR refused: {message}", region=self.region)
        if status != 200 or not isinstance(answer, dict):
            msg = f"control plane {self.url}: {method} {path} answered {status}: {message}"
            raise GatewayError(msg, region=self.region)
        return answer
