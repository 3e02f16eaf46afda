"""The one loop of a fleet run: boot the fleet, play the timeline, sample, drain, record.

Two ports, so that the same loop drives a real run and a simulation test:

* a :class:`Stage` is the regions' side: it carries out timeline steps
  (faults, heals, DNS, the replicator), registers devices created during
  the run, and measures the doors, the replicator, the cloud-side arrivals
  and the shadows. In ``iotdr sim run`` it is the local regions
  (:mod:`simulators.fleet._driver`); in the simulation tier an in-memory world
  on virtual time.
* a :class:`Fleet` is the devices: started, added to, asked for their
  records, quieted at the end, and the faults on their side switched
  (``fault: {side: devices, ...}``: their way to a region fails, the door
  untouched). Device-host processes in a real run; devices in the loop
  itself in simulation.

Times come from the running loop (``loop.time()``: ``CLOCK_MONOTONIC`` in a
real loop, which device-host processes share; virtual time in simulation).
Every record is stamped on that clock and made relative to ``t = 0``, the
moment the fleet was connected and the timeline started, in :meth:`finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import Arrival, DeviceEvent, SentSample, StepRecord
from simulators.fleet._scenario import CreateDevicesStep, DeviceFaultStep, FaultStep, HealStep

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from simulators.fleet._records import DoorSample, RunRecord, ShadowCheck
    from simulators.fleet._scenario import DeviceFaultMode, Scenario, Step

__all__ = ["Fleet", "FleetFinal", "Progress", "Stage", "TimelinePlayer"]

logger = logging.getLogger(__name__)

DeviceEntry = dict[str, str]
"""A device as a fleet starts it: ``{"name": ...}`` plus what its identity needs."""


@dataclass(frozen=True, slots=True)
class Progress:
    """What the live display shows, about once a second.

    Attributes:
        phase: ``provisioning``, ``booting``, ``running``, ``draining``, ``done``.
        t: seconds into the timeline.
        duration_s: the timeline's length.
        connected: devices connected per region.
        devices: devices in the fleet now.
        sent: telemetry messages published.
        delivered: telemetry arrivals counted in the regions.
        faults: active faults, ``region: mode``.
        last_step: the last timeline step carried out.
    """

    phase: str
    t: float = 0.0
    duration_s: float = 0.0
    connected: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    sent: int = 0
    delivered: int = 0
    faults: tuple[str, ...] = ()
    last_step: str = ""


@dataclass(slots=True)
class FleetFinal:
    """The devices at the end, after they stopped publishing and emptied their outboxes.

    Attributes:
        sent: per device, numbered telemetry messages published.
        region: per device, where it is connected (None: nowhere).
        reported: per device, the state it last reported to its shadow (``seq`` included).
        outbox: per device, messages still in its outbox (only those with any).
        usage: per device host, its devices, peak memory (``max_rss_kb``) and CPU (``cpu_s``).
    """

    sent: dict[str, int] = field(default_factory=dict)
    region: dict[str, str | None] = field(default_factory=dict)
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    usage: list[dict[str, Any]] = field(default_factory=list)


class Stage(Protocol):
    """The regions' side of a run."""

    async def apply(self, step: Step) -> str:
        """Carry out a fault, heal, DNS or replicator step; return what the record says of it."""
        ...

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """Register new devices in the primary only (the AWS way); their fleet entries."""
        ...

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """The doors at ``t`` and the replicator's lag in seconds (None: not running)."""
        ...

    def delivered(self) -> int:
        """Telemetry arrivals counted so far."""
        ...

    async def settle(self) -> list[Arrival]:
        """Wait until arrivals stop (bounded); every arrival, on the loop's clock."""
        ...

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Compare every device's last reported state with the regions' shadows (bounded wait)."""
        ...


class Fleet(Protocol):
    """The devices of a run."""

    async def start(self, devices: Sequence[DeviceEntry]) -> None:
        """Start the fleet (returns before the devices are connected)."""
        ...

    async def add(self, devices: Sequence[DeviceEntry]) -> None:
        """Start devices created during the run."""
        ...

    def take_events(self) -> list[DeviceEvent]:
        """Device events since the last call, on the loop's clock."""
        ...

    def sent(self) -> int:
        """Telemetry messages published so far, all devices together."""
        ...

    def check(self) -> None:
        """Raise SimulatorError if part of the fleet died."""
        ...

    async def set_device_fault(
        self, region: str, mode: DeviceFaultMode, fraction: float = 1.0
    ) -> None:
        """Fail the way to ``region`` of ``fraction`` of the devices (chosen from the seed)."""
        ...

    async def clear_device_fault(self, region: str) -> None:
        """Clear the device-side fault of ``region``."""
        ...

    async def quiet(self) -> FleetFinal:
        """Stop publishing, empty the outboxes (bounded), report where everyone is."""
        ...


class StopRequestedError(Exception):
    """A signal asked the run to stop; the argument says which (the report's note)."""


class TimelinePlayer:
    """Plays one scenario on a stage with a fleet, filling ``record``.

    Args:
        scenario: what to play.
        stage: the regions.
        fleet: the devices.
        record: filled as the run goes (see :meth:`finish`).
        progress: called about once a second.
        sample_s: how often the doors and the replicator are sampled.
        boot_limit_s: how long the fleet may take to connect before ``t = 0``
            (plus 20 ms per device); the run starts anyway and says so.
    """

    def __init__(
        self,
        scenario: Scenario,
        stage: Stage,
        fleet: Fleet,
        record: RunRecord,
        *,
        progress: Callable[[Progress], None] | None = None,
        sample_s: float = 1.0,
        boot_limit_s: float = 120.0,
    ) -> None:
        self.scenario = scenario
        self.stage = stage
        self.fleet = fleet
        self.record = record
        # Set by the driver's SIGINT/SIGTERM handler; the timeline and the boot stop at
        # their next tick even if the cancellation that came with it was swallowed
        # (Python 3.11's wait_for returns a result that raced a cancel, for one).
        self.stopping: str | None = None
        self._progress_cb = progress
        self._sample_s = sample_s
        self._boot_limit_s = boot_limit_s
        self.t0: float | None = None
        self.phase = "booting"
        self.region_of: dict[str, str | None] = {}
        self.faults: dict[str, str] = {}
        self.last_step = ""
        self._events: list[DeviceEvent] = []
        self._arrivals: list[Arrival] = []
        self._next_device = 1
        self._creating: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"TimelinePlayer({self.scenario.name!r}, {self.phase})"

    @staticmethod
    def _clock() -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # finish() after an interrupted run, outside the loop
            return time.monotonic()  # what a real loop's time() reads

    def now(self) -> float:
        """Seconds into the timeline (0 before it starts)."""
        return 0.0 if self.t0 is None else self._clock() - self.t0

    # -- the run -----------------------------------------------------------------------------

    async def run(self, devices: Sequence[DeviceEntry]) -> None:
        """Boot ``devices``, play the timeline to its end, drain, fill the record."""
        self.record.devices = tuple(d["name"] for d in devices)
        self._next_device = len(devices) + 1
        await self.fleet.start(devices)
        await self._boot()
        self.phase = "running"
        self.t0 = self._clock()
        pending = sorted(self.scenario.timeline, key=lambda s: s.at)
        next_sample = 0.0
        while True:
            self._take_events()
            now = self.now()
            while pending and pending[0].at <= now:
                await self._apply(pending.pop(0))
            if now >= next_sample:
                await self._sample()
                next_sample += self._sample_s
            if now >= self.scenario.duration_s:
                break
            self.fleet.check()
            self._check_stopping()
            await asyncio.sleep(min(0.1, self._sample_s))
        self.record.duration_s = round(self.now(), 3)
        await self._drain()

    async def _boot(self) -> None:
        total = len(self.record.devices)
        deadline = self._clock() + self._boot_limit_s + 0.02 * total
        while self._clock() < deadline:
            self.fleet.check()
            self._take_events()
            self._progress()
            if self._connected_count() >= total:
                return
            self._check_stopping()
            await asyncio.sleep(0.2)
        self.record.notes.append(
            f"only {self._connected_count()} of {total} devices had connected when the "
            f"timeline started (after {self._boot_limit_s + 0.02 * total:.0f} s)"
        )

    def _check_stopping(self) -> None:
        if self.stopping is not None:
            raise StopRequestedError(self.stopping)

    def _connected_count(self) -> int:
        return sum(1 for r in self.region_of.values() if r is not None)

    def _take_events(self) -> None:
        for event in self.fleet.take_events():
            self._events.append(event)
            if event.kind == "connected":
                self.region_of[event.device] = event.region
            elif event.kind == "disconnected" and self.region_of.get(event.device) == event.region:
                self.region_of[event.device] = None

    async def _apply(self, step: Step) -> None:
        t = round(self.now(), 3)
        if isinstance(step, CreateDevicesStep):
            # Registering takes seconds at the control plane's quotas (or fails in an
            # outage): the timeline goes on meanwhile, as it would in the world.
            names = fleet_device_names(step.count, start=self._next_device)
            self._next_device += step.count
            task = asyncio.create_task(self._create(t, names))
            self._creating.add(task)
            task.add_done_callback(self._creating.discard)
            self.last_step = f"t={t:.0f}s create_devices {len(names)}"
            return
        detail = await self._carry_out(step, t)
        action, region = _step_action(step)
        record = StepRecord(t, action, region, detail)
        self.record.steps.append(record)
        self.last_step = f"t={record.t:.0f}s {record.action} {record.region or ''} {record.detail}"
        logger.info("fleet.step", extra={"step": record.action, "region": record.region})

    async def _carry_out(self, step: Step, t: float) -> str:
        """Door-side steps to the stage, device-side ones to the fleet; the record's detail."""
        if isinstance(step, DeviceFaultStep):
            await self.fleet.set_device_fault(step.region, step.mode, step.fraction)
            share = "" if step.fraction >= 1 else f" {step.fraction * 100:g}%"
            self.faults[f"{step.region} devices"] = f"{step.mode}{share}"
            self.record.notes.append(
                f"t={t:.0f} s: {step.region} {step.mode} on the devices' side "
                f"({step.fraction:.0%} of the devices); its door was not touched"
            )
            # The mode, as a door's fault is recorded, and the share when it is not the whole
            # fleet: the report's disruption reads both.
            return f"{step.mode}{share}"
        if isinstance(step, HealStep):
            detail = "up"
            if step.side != "devices":
                detail = await self.stage.apply(step)
                self.faults.pop(step.region, None)
            if step.side != "door":
                await self.fleet.clear_device_fault(step.region)
                self.faults.pop(f"{step.region} devices", None)
            return detail
        detail = await self.stage.apply(step)
        if isinstance(step, FaultStep):
            self.faults[step.region] = detail
        return detail

    async def _create(self, t: float, names: list[str]) -> None:
        primary = self.scenario.regions[0]
        try:
            entries = await self.stage.register_devices(names)
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the run goes on
            self.record.notes.append(f"t={t:.0f} s: creating {len(names)} devices failed: {exc}")
            self.record.steps.append(StepRecord(t, "create_devices", primary, "failed"))
            return
        self.record.devices = (*self.record.devices, *names)
        await self.fleet.add(entries)
        self.record.steps.append(StepRecord(t, "create_devices", primary, str(len(names))))

    async def _sample(self) -> None:
        t = self._clock()
        doors, lag = await self.stage.sample(t)
        self.record.doors.extend(doors)
        self.record.sent_samples.append(SentSample(t, self.fleet.sent()))
        if lag is not None:
            self.record.replicator_lag_s.append((t, lag))
        self._progress()

    async def _drain(self) -> None:
        self.phase = "draining"
        self._progress()
        if self._creating:
            await asyncio.wait(set(self._creating), timeout=120)
        self.record.steps.sort(key=lambda step: step.t)
        final = await self.fleet.quiet()
        self._take_events()
        self._arrivals = await self.stage.settle()
        self.record.sent.update(final.sent)
        self.record.final_region.update(final.region)
        for name in self.record.devices:
            self.record.final_region.setdefault(name, None)
        if final.usage:
            devices = sum(u.get("devices", 0) for u in final.usage)
            rss_kb = sum(u.get("max_rss_kb", 0) for u in final.usage)
            self.record.settings["device_hosts"] = {
                "processes": len(final.usage),
                "max_rss_mb": round(rss_kb / 1024, 1),
                "kb_per_device": round(rss_kb / devices, 1) if devices else None,
                "cpu_s": round(sum(u.get("cpu_s", 0.0) for u in final.usage), 1),
                "outbox": final.usage[0].get("outbox"),
            }
        for device, depth in sorted(final.outbox.items()):
            self.record.notes.append(f"{device} still had {depth} messages in its outbox")
        self.record.shadows = await self.stage.check_shadows(final)
        self.phase = "done"
        self._progress()

    def finish(self, *, interrupted: str | None = None) -> None:
        """Put the records on the timeline's clock; call once, also after an interruption."""
        t0 = self.t0 if self.t0 is not None else 0.0
        if interrupted is not None:
            with contextlib.suppress(RuntimeError):
                self._take_events()
            self.record.duration_s = round(self.now(), 3) if self.t0 is not None else 0.0
            self.record.notes.append(
                f"{interrupted} at t={self.record.duration_s:.1f} s; the report is partial"
            )
        self.record.events = [
            DeviceEvent(round(e.t - t0, 4), e.device, e.kind, e.region, e.detail)
            for e in self._events
        ]
        self.record.arrivals = [
            Arrival(round(a.t - t0, 4), a.region, a.device, a.seq) for a in self._arrivals
        ]
        self.record.doors = [
            dataclasses.replace(d, t=round(d.t - t0, 3)) for d in self.record.doors
        ]
        self.record.sent_samples = [
            SentSample(round(s.t - t0, 3), s.sent) for s in self.record.sent_samples
        ]
        self.record.replicator_lag_s = [
            (round(t - t0, 3), lag) for t, lag in self.record.replicator_lag_s
        ]

    def _progress(self) -> None:
        if self._progress_cb is None:
            return
        connected: dict[str, int] = dict.fromkeys(self.scenario.regions, 0)
        for region in self.region_of.values():
            if region is not None:
                connected[region] = connected.get(region, 0) + 1
        with contextlib.suppress(Exception):  # the display must never stop the run
            self._progress_cb(
                Progress(
                    phase=self.phase,
                    t=self.now(),
                    duration_s=self.scenario.duration_s,
                    connected=connected,
                    devices=len(self.record.devices),
                    sent=self.fleet.sent(),
                    delivered=self.stage.delivered(),
                    faults=tuple(f"{r}: {m}" for r, m in self.faults.items()),
                    last_step=self.last_step,
                )
            )


def _step_action(step: Step) -> tuple[str, str | None]:
    """The record's action and region for a step the stage carries out."""
    from simulators.fleet import _scenario as sc  # noqa: PLC0415

    if isinstance(step, sc.FaultStep | sc.DeviceFaultStep):
        return "fault", step.region
    if isinstance(step, sc.HealStep):
        return "heal", step.region
    if isinstance(step, sc.DnsStep):
        return "dns", step.cname
    if isinstance(step, sc.ReplicatorStep):
        return "replicator", None
    return type(step).__name__, None
