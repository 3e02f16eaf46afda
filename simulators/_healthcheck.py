"""The Route 53 stand-in's health checker: probes each region end to end and flips the CNAME.

Route 53 semantics: every ``interval_s`` each region is probed; a healthy
region becomes unhealthy after ``failure_threshold`` failed probes in a row,
an unhealthy one healthy again after ``recovery_threshold`` passing probes in
a row. Every probe counts, failures after a success included: a region never
stays healthy because it once was (the reference solution's checker did).
The device-facing CNAME points at the primary while it is healthy, else at
the secondary while that is healthy; with both unhealthy it stays where it is
(Route 53 answers the primary record then; keeping the last answer is what a
fleet would rather have). The TXT record carries the roles.

The probe is what a device does: an mTLS connection with the checker's own
identity, a subscription, a publish and its echo within ``timeout_s`` (the
device agent's prober, ``roundtrip`` depth). Its blind spot is by design: a
region that the checker reaches but devices cannot (``partial``) stays
healthy here, which is why devices probe for themselves.

:class:`HealthTracker` is the pure part (results in, status changes out);
:class:`HealthChecker` runs the probes and edits the zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from device_agent import Endpoint, PahoTransport, Prober, TransportFactory
from simulators._errors import SimulatorError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence

    from simulators._topology import LocalRegion
    from simulators.dns import Zone

__all__ = ["HealthCheckConfig", "HealthChecker", "HealthTracker", "RegionHealth"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    """Route 53 health check settings.

    Attributes:
        interval_s: seconds between probes of a region (Route 53: 30, or 10 "fast").
        failure_threshold: failed probes in a row that make a region unhealthy (1..10, default 3).
        recovery_threshold: passing probes in a row that make it healthy again
            (default: the failure threshold, as in Route 53).
        timeout_s: deadline of one probe.
        cname_ttl: TTL of the CNAME the checker writes.
    """

    interval_s: float = 10.0
    failure_threshold: int = 3
    recovery_threshold: int | None = None
    timeout_s: float = 4.0
    cname_ttl: int = 0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            msg = "health check interval_s and timeout_s must be more than zero"
            raise SimulatorError(msg)
        for name in ("failure_threshold", "recovery_threshold"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 10:
                msg = f"health check {name} must be 1..10 (Route 53's range), not {value}"
                raise SimulatorError(msg)

    @property
    def recovery(self) -> int:
        """The recovery threshold in force."""
        return self.recovery_threshold or self.failure_threshold


@dataclass(slots=True)
class RegionHealth:
    """One region as the checker sees it."""

    healthy: bool = True
    passes: int = 0  # in a row
    failures: int = 0  # in a row
    last_ok: bool | None = None
    last_kind: str | None = None
    last_latency_s: float | None = None
    changed_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "healthy": self.healthy,
            "passes_in_a_row": self.passes,
            "failures_in_a_row": self.failures,
            "last_ok": self.last_ok,
            "last_kind": self.last_kind,
            "last_latency_s": self.last_latency_s,
            "changed_at": self.changed_at,
        }


@dataclass(slots=True)
class HealthTracker:
    """Pure: probe results in, health changes and the serving region out. No I/O, no clock."""

    config: HealthCheckConfig
    primary: str
    secondary: str
    regions: dict[str, RegionHealth] = field(default_factory=dict)
    serving: str = ""

    def __post_init__(self) -> None:
        for name in (self.primary, self.secondary):
            self.regions.setdefault(name, RegionHealth())
        self.serving = self.serving or self.primary

    def record(
        self,
        region: str,
        ok: bool,
        now: float,
        *,
        kind: str | None = None,
        latency_s: float | None = None,
    ) -> bool:
        """Feed one probe result; True if the region's health changed."""
        health = self.regions[region]
        health.last_ok, health.last_kind, health.last_latency_s = ok, kind, latency_s
        if ok:
            health.passes += 1
            health.failures = 0
        else:
            health.failures += 1
            health.passes = 0
        flip = (health.healthy and health.failures >= self.config.failure_threshold) or (
            not health.healthy and health.passes >= self.config.recovery
        )
        if flip:
            health.healthy = not health.healthy
            health.changed_at = now
        return flip

    def choose(self) -> str:
        """Where the CNAME should point now (and remember it)."""
        if self.regions[self.primary].healthy:
            self.serving = self.primary
        elif self.regions[self.secondary].healthy:
            self.serving = self.secondary
        return self.serving


class HealthChecker:
    """Probes the regions and keeps the device-facing CNAME and roles TXT up to date.

    Args:
        zone: the DNS zone to edit (the Route 53 stand-in's).
        regions: primary first, then secondary.
        ports: each region's mTLS port (devices' port) by region name.
        ssl_context: the checker's own identity (client certificate, fleet CA trusted).
        client_id: the checker's client ID.
        config: interval, thresholds, timeout.
        name: the device-facing name, relative to the zone (``iot``).
        transport_factory: MQTT connections (paho by default).
        timer: monotonic clock.
    """

    def __init__(
        self,
        zone: Zone,
        regions: Sequence[LocalRegion],
        *,
        ports: dict[str, int],
        ssl_context: ssl.SSLContext,
        client_id: str = "iotdr-health-checker",
        config: HealthCheckConfig | None = None,
        name: str = "iot",
        transport_factory: TransportFactory = PahoTransport,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(regions) < 2:
            msg = "the health checker needs a primary and a secondary region"
            raise SimulatorError(msg)
        self.zone = zone
        self.regions = list(regions)
        self.config = config or HealthCheckConfig()
        self.name = name
        self._ports = ports
        self._timer = timer
        self.tracker = HealthTracker(self.config, regions[0].name, regions[1].name)
        self._prober = Prober(
            client_id=client_id,
            ssl_context=ssl_context,
            transport_factory=transport_factory,
            timeout_s=self.config.timeout_s,
            topic=f"iotdr/health/{client_id}",
            timer=timer,
        )
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"HealthChecker(serving={self.tracker.serving!r}, "
            f"interval_s={self.config.interval_s:g}, threshold={self.config.failure_threshold})"
        )

    def publish_records(self) -> None:
        """Write the CNAME (serving region) and the roles TXT into the zone."""
        serving = next(r for r in self.regions if r.name == self.tracker.serving)
        self.zone.set(self.name, "CNAME", serving.endpoint + ".", ttl=self.config.cname_ttl)
        self.zone.set_json(
            f"_{self.name}", {"primary": self.tracker.primary, "secondary": self.tracker.secondary}
        )

    async def check_once(self) -> None:
        """Probe every region once (side by side), record, and flip the CNAME if needed."""
        outcomes = await asyncio.gather(
            *(
                self._prober.probe(
                    Endpoint(r.name, r.endpoint, self._ports[r.name]), r.host, "roundtrip"
                )
                for r in self.regions[:2]
            )
        )
        now = self._timer()
        for outcome in outcomes:
            if self.tracker.record(
                outcome.region, outcome.ok, now, kind=outcome.kind, latency_s=outcome.latency_s
            ):
                health = self.tracker.regions[outcome.region]
                logger.warning(
                    "health.changed",
                    extra={
                        "region": outcome.region,
                        "healthy": health.healthy,
                        "kind": outcome.kind,
                    },
                )
        before = self.tracker.serving
        after = self.tracker.choose()
        if after != before:
            logger.warning("health.failover", extra={"from": before, "to": after})
            self.publish_records()

    async def run(self) -> None:
        """Probe every ``interval_s`` until cancelled."""
        self.publish_records()
        while True:
            started = self._timer()
            await self.check_once()
            await asyncio.sleep(max(0.0, self.config.interval_s - (self._timer() - started)))

    def start(self) -> None:
        """Run in the current event loop as a task."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="health-checker")

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        """Serving region and each region's health as the checker sees it."""
        return {
            "serving": self.tracker.serving,
            "primary": self.tracker.primary,
            "secondary": self.tracker.secondary,
            "interval_s": self.config.interval_s,
            "failure_threshold": self.config.failure_threshold,
            "recovery_threshold": self.config.recovery,
            "regions": {name: h.as_dict() for name, h in self.tracker.regions.items()},
        }
