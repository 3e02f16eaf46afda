"""The control plane as a child process: its configuration, start, readiness, control, stop.

:func:`start_control_plane` writes a :class:`ControlPlaneConfig` to the state
folder and runs ``python -m simulators.controlplane --config <file>``. The
child binds its port and prints one JSON line on stdout: ``controlplane.ready``
with the port, or ``controlplane.failed`` with the reason. Readiness is that
line, read with a deadline, never a sleep. The child's log (JSON lines) stays
in the state folder. The returned :class:`ControlPlane` switches outages,
sets a region's quotas, bulk-registers a fleet and reads status through the
admin endpoints (:class:`ControlPlaneAdmin`), and stops the child by its PID.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from simulators._child import read_report
from simulators._errors import AddressInUseError, SimulatorError
from simulators.controlplane._quotas import QuotaTable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path
    from types import TracebackType

    from simulators.controlplane._bulk import BulkDevice, BulkPolicy, BulkResult
    from simulators.controlplane._middleware import OutageMode

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "THING_TYPE_DELETE_AFTER_S",
    "ControlPlane",
    "ControlPlaneAdmin",
    "ControlPlaneConfig",
    "ControlPlaneError",
    "start_control_plane",
]

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNT_ID = "123456789012"
"""moto's default account: the account of every request and event."""

THING_TYPE_DELETE_AFTER_S = 300.0
"""AWS deletes a thing type only five minutes after its deprecation."""

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_LOG_TAIL = 5


class ControlPlaneError(SimulatorError):
    """The local control plane could not be configured, started, reached or stopped."""

    def __init__(self, message: str, *, region: str | None = None) -> None:
        super().__init__(message)
        self.region = region


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPlaneConfig:
    """What the control-plane process serves, and where: what the parent hands the child.

    Attributes:
        host: the loopback address to bind.
        port: the port; 0 picks a free one.
        brokers: each region's broker plain listener ``(host, port)``, where its
            registry events are published; a region without one gets no events.
        quotas: TPS overrides over AWS's defaults, ``default`` for unlisted APIs.
        region_quotas: per region, TPS overrides over ``quotas`` (a region's own quotas).
        account_id: the account of every request and event.
        log_level: the child's log level.
        thing_type_delete_after_s: how long a thing type must have been deprecated
            before ``DeleteThingType`` deletes it (AWS: 300 s; shorter for tests).
        issuer_dir: a fleet PKI directory (``fleet-ca.crt``, ``fleet-ca.key``) whose CA
            signs the certificates of CreateKeysAndCertificate and
            CreateCertificateFromCsr, as AWS's own CA signs them, so that the regions'
            doors (which trust that CA) admit them once they are registered ACTIVE;
            None: a CA of the process's own, which no door trusts.
    """

    host: str = "127.0.0.1"
    port: int = 0
    brokers: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    quotas: Mapping[str, float] = field(default_factory=dict)
    region_quotas: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    account_id: str = DEFAULT_ACCOUNT_ID
    log_level: str = "info"
    thing_type_delete_after_s: float = THING_TYPE_DELETE_AFTER_S
    issuer_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            msg = f"control plane: host {self.host!r} must be a loopback IP address (127.0.0.1)"
            raise ControlPlaneError(msg)
        if not 0 <= self.port <= 65535:
            msg = f"control plane: port {self.port} is not a port number (0..65535)"
            raise ControlPlaneError(msg)
        for region, address in self.brokers.items():
            if not _REGION.match(region):
                msg = f"control plane: {region!r} is not a region name (like us-east-1)"
                raise ControlPlaneError(msg, region=region)
            host, port = address
            if not isinstance(host, str) or not isinstance(port, int) or not 0 < port <= 65535:
                msg = f"control plane: the broker of {region} must be (host, port), not {address!r}"
                raise ControlPlaneError(msg, region=region)
        try:
            common = QuotaTable.with_overrides(self.quotas)
        except ValueError as exc:
            raise ControlPlaneError(f"control plane: {exc}") from exc
        for region, overrides in self.region_quotas.items():
            if not _REGION.match(region):
                msg = f"control plane: {region!r} is not a region name (like us-east-1)"
                raise ControlPlaneError(msg, region=region)
            try:
                QuotaTable.with_overrides(overrides, base=common)
            except (ValueError, AttributeError) as exc:
                raise ControlPlaneError(f"control plane quotas of {region}: {exc}") from exc
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ControlPlaneError(f"control plane: unknown log level {self.log_level!r}")
        wait_s = self.thing_type_delete_after_s
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 <= wait_s < 1e9:
            msg = f"control plane: thing_type_delete_after_s must be seconds >= 0, not {wait_s!r}"
            raise ControlPlaneError(msg)

    def to_json(self) -> str:
        """The configuration as JSON, for the child process."""
        data = {
            "host": self.host,
            "port": self.port,
            "brokers": {region: [host, port] for region, (host, port) in self.brokers.items()},
            "quotas": dict(self.quotas),
            "region_quotas": {region: dict(q) for region, q in self.region_quotas.items()},
            "account_id": self.account_id,
            "log_level": self.log_level,
            "thing_type_delete_after_s": self.thing_type_delete_after_s,
            "issuer_dir": self.issuer_dir,
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> ControlPlaneConfig:
        """Parse :meth:`to_json`'s output.

        Raises:
            ControlPlaneError: not JSON, or not a valid configuration.
        """
        try:
            data = json.loads(text)
            brokers = {r: (str(h), int(p)) for r, (h, p) in dict(data.pop("brokers", {})).items()}
            return cls(brokers=brokers, **data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ControlPlaneError(f"control plane {source}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ControlPlaneAdmin:
    """The admin endpoints of a running control plane, whoever started it.

    Attributes:
        url: the control plane's base URL (``http://127.0.0.1:PORT``).
        timeout_s: how long one request may take.
        bulk_timeout_s: how long one bulk-registration request may take.
    """

    url: str
    timeout_s: float = 5.0
    bulk_timeout_s: float = 120.0

    def set_outage(self, region: str, mode: OutageMode) -> None:
        """Switch ``region``'s control plane to ``up``, ``http503`` or ``drop``.

        Raises:
            ControlPlaneError: the mode or region was refused, or the server is unreachable.
        """
        self._call("POST", f"/_iotdr/regions/{region}/control-plane", {"mode": mode}, region)

    def status(self) -> dict[str, Any]:
        """Outage mode and event counters per region, quotas, request counters.

        Raises:
            ControlPlaneError: the server is unreachable.
        """
        return self._call("GET", "/_iotdr/status")

    def set_quotas(self, region: str, quotas: Mapping[str, float]) -> dict[str, float]:
        """Give ``region`` TPS quotas of its own over the server's table; ``{}`` resets them.

        Returns the rates now in force in ``region``.

        Raises:
            ControlPlaneError: a rate or the region was refused, or the server is unreachable.
        """
        path = f"/_iotdr/regions/{region}/quotas"
        answer = self._call("POST", path, {"quotas": dict(quotas)}, region)
        return {str(api): float(tps) for api, tps in answer["quotas"].items()}

    def bulk_register(
        self,
        region: str,
        devices: Iterable[BulkDevice],
        *,
        policy: BulkPolicy | None = None,
        chunk_size: int | None = None,
    ) -> BulkResult:
        """Write a fleet's steady state into ``region``, in requests of ``chunk_size`` devices.

        Each device's certificate is registered ACTIVE (its id the SHA-256 of
        its DER, as AWS's), a thing of its name is created and the certificate
        attached to it; ``policy`` is created once and attached to every
        certificate. Unthrottled, and no registry event is published: this is
        the state the replicator would have reached, not a change for it to
        copy. The region's door sees the certificates through its change feed.
        Registering a device again changes nothing.

        Raises:
            ControlPlaneError: a device or the region was refused (the message
                names the device and field), or the server is unreachable.
                Chunks before the refused one stay registered.
        """
        from simulators.controlplane._bulk import (  # noqa: PLC0415 - _bulk imports this module
            BULK_CHUNK,
            BulkRegistration,
            BulkResult,
            bulk_chunks,
        )

        try:
            chunks = bulk_chunks(list(devices), chunk_size or BULK_CHUNK)
        except ValueError as exc:
            raise ControlPlaneError(f"control plane: {exc}", region=region) from exc
        total = BulkResult(region=region)
        path = f"/_iotdr/regions/{region}/bulk-registration"
        for chunk in chunks:
            body = BulkRegistration(devices=chunk, policy=policy).to_json()
            answer = self._call("POST", path, body, region, timeout_s=self.bulk_timeout_s)
            total += BulkResult.from_json(answer)
        return total

    def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        region: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        if not self.url.startswith("http://"):
            raise ControlPlaneError(f"control plane: {self.url!r} is not an http:// URL")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - an http:// URL, checked above
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            timeout = timeout_s or self.timeout_s
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            message = (
                json.loads(detail).get("message", detail) if detail.startswith("{") else detail
            )
            msg = f"control plane at {self.url}: {method} {path} refused: {message}"
            raise ControlPlaneError(msg, region=region) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            msg = f"control plane at {self.url} is not reachable: {exc}"
            raise ControlPlaneError(msg, region=region) from exc


@dataclass(slots=True)
class ControlPlane:
    """A running control-plane process. Stop it with :meth:`stop` or a ``with`` block.

    Attributes:
        host: the bound address.
        port: the bound port.
        config_path: the configuration the child was started with.
        log_path: the child's log (JSON lines).
    """

    host: str
    port: int
    config_path: Path
    log_path: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"ControlPlane({self.url}, {state}, log={str(self.log_path)!r})"

    @property
    def url(self) -> str:
        """The endpoint for boto3: ``boto3.client("iot", endpoint_url=cp.url, ...)``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the child is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    @property
    def admin(self) -> ControlPlaneAdmin:
        """The admin endpoints' client."""
        return ControlPlaneAdmin(self.url)

    def set_outage(self, region: str, mode: OutageMode) -> None:
        """Switch ``region``'s control plane to ``up``, ``http503`` or ``drop``.

        Raises:
            ControlPlaneError: the mode or region was refused, or the server is unreachable.
        """
        self.admin.set_outage(region, mode)

    def status(self) -> dict[str, Any]:
        """The server's status: outage mode and event counters per region, quotas, counters."""
        return self.admin.status()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the child by its PID: SIGTERM, then SIGKILL after ``timeout_s``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._process = None
        logger.info("controlplane.stopped", extra={"url": self.url})

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_control_plane(
    *,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    brokers: Mapping[str, tuple[str, int]],
    quotas: Mapping[str, float] | None = None,
    region_quotas: Mapping[str, Mapping[str, float]] | None = None,
    timeout_s: float = 15.0,
    log_level: str = "info",
    thing_type_delete_after_s: float = THING_TYPE_DELETE_AFTER_S,
) -> ControlPlane:
    """Start the control-plane process and return once it serves.

    Args:
        state_dir: where ``controlplane/config.json`` and ``controlplane/controlplane.log`` go.
        host: the loopback address to bind.
        port: the port, 0 for a free one.
        brokers: each region's broker plain listener, for its registry events.
        quotas: TPS overrides over AWS's defaults (``{"CreateThing": 5, "default": 50}``).
        region_quotas: per region, TPS overrides over ``quotas``.
        timeout_s: how long the process may take to get ready.
        log_level: the child's log level.
        thing_type_delete_after_s: how long a thing type must have been deprecated
            before it can be deleted (AWS: 300 s).

    The fleet CA in ``state_dir/pki`` (:class:`~simulators.FleetPKI`), when there
    is one, issues the certificates AWS's CA would (``issuer_dir``).

    Raises:
        AddressInUseError: the port is taken.
        ControlPlaneError: bad configuration, or the process exited or did not get ready.
    """
    config = ControlPlaneConfig(
        host=host,
        port=port,
        brokers=dict(brokers),
        quotas=dict(quotas or {}),
        region_quotas={region: dict(q) for region, q in (region_quotas or {}).items()},
        log_level=log_level,
        thing_type_delete_after_s=thing_type_delete_after_s,
        issuer_dir=str(pki)
        if (pki := state_dir / "pki").joinpath("fleet-ca.key").exists()
        else None,
    )
    folder = state_dir / "controlplane"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.json"
        config_path.write_text(config.to_json())
    except OSError as exc:
        raise ControlPlaneError(f"control plane: cannot write to {folder}: {exc.strerror}") from exc
    log_path = folder / "controlplane.log"
    command = [sys.executable, "-m", "simulators.controlplane", "--config", str(config_path)]
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C reaches only the program that started it,
        # which stops it in order (see simulators._broker).
        process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    plane = ControlPlane(host, port, config_path, log_path, process)
    try:
        ready = _read_ready_line(plane, process, timeout_s)
    except BaseException:
        plane.stop()
        raise
    plane.port = int(ready["port"])
    logger.info("controlplane.started", extra={"url": plane.url, "pid": plane.pid})
    return plane


def _read_ready_line(
    plane: ControlPlane, process: subprocess.Popen[bytes], timeout_s: float
) -> dict[str, Any]:
    """The child's report line (JSON with an ``event``), skipping any other output."""
    report = read_report(process, timeout_s)
    if report is None:
        msg = (
            f"control plane was not ready after {timeout_s:g} s "
            f"(log: {plane.log_path}): {plane.log_tail() or 'no log'}"
        )
        raise ControlPlaneError(msg)
    if report.get("event") == "controlplane.ready":
        return report
    if report.get("error") == "address_in_use":
        raise AddressInUseError(plane.host, int(report["port"]), what="control plane")
    process.wait(5)
    reason = report.get("message") or plane.log_tail() or "no log"
    msg = f"control plane exited during start-up: {reason} (log: {plane.log_path})"
    raise ControlPlaneError(msg)
