"""The fleet driver: local regions, a provisioned fleet, the replicator, device hosts, a timeline.

:func:`run_fleet` is what ``iotdr sim run`` does, in order:

1. start the local regions of the scenario (the door in front of each
   broker, control plane, shadow services, DNS, health checker) with the
   scenario's quotas;
2. provision the fleet in every region at once (the steady state the
   replicator would have reached; bulk path, no registry events);
3. start the replicator (``iotdr replicator run``, a process of its own)
   unless ``replication: off``, and the cloud-side counter;
4. start the device hosts (one process per core, the devices spread over
   them) and wait until the fleet is connected: that is ``t = 0``;
5. play the timeline, sampling the doors, the replicator and the fleet
   every second;
6. at the end: devices stop publishing and empty their outboxes, the
   counter settles, every shadow is checked; then everything started is
   stopped, by PID, in reverse order (also on Ctrl-C, SIGTERM or failure),
   and the report is written.

Only steps 4-6 are timed; the records they produce
(:class:`~simulators.fleet._records.RunRecord`) are all the report reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulators._errors import SimulatorError
from simulators._topology import DEFAULT_DOMAIN, LocalRegion
from simulators.fleet._cloud import CloudCounter
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import (
    Arrival,
    DeviceEvent,
    DoorSample,
    RunRecord,
    SentSample,
    ShadowCheck,
    StepRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators._pki import CertifiedKey
    from simulators._regions import LocalRegions
    from simulators.fleet._scenario import Scenario

__all__ = ["Progress", "RunOptions", "run_fleet"]

logger = logging.getLogger(__name__)

_SAMPLE_S = 1.0
_BOOT_LIMIT_S = 120.0
_SHADOW_SETTLE_S = 30.0
_CONTROL_PLANE_MODES = {"control-plane-down": "http503", "control-plane-drop": "drop"}


@dataclass(frozen=True, slots=True)
class Progress:
    """What the live display shows, about once a second.

    Attributes:
        phase: ``starting``, ``provisioning``, ``booting``, ``running``, ``draining``, ``done``.
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a scenario.

    Attributes:
        scenario: what to play.
        report_dir: where the report goes.
        seed: the fleet's randomness.
        processes: device-host processes (default: one per core).
        state_dir: keys, outboxes, logs (default: a temporary directory, removed after).
        broker: ``auto`` (mosquitto when installed), ``mosquitto`` or ``amqtt``.
        progress: called about once a second with the run's state.
    """

    scenario: Scenario
    report_dir: Path
    seed: int = 0
    processes: int | None = None
    state_dir: Path | None = None
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    progress: Callable[[Progress], None] | None = None


def run_fleet(options: RunOptions) -> dict[str, Any]:
    """Run the scenario and write the report; returns report.json's content.

    Raises:
        SimulatorError: one clear line for what stopped the run (ports taken,
            a broker missing, a device host that died, ...).
    """
    with contextlib.ExitStack() as scratch:
        state = options.state_dir or Path(
            scratch.enter_context(tempfile.TemporaryDirectory(prefix="iotdr-fleet-"))
        )
        state.mkdir(parents=True, exist_ok=True)
        run = _FleetRun(options, state)
        return run.run()


def local_regions_for(names: tuple[str, ...]) -> tuple[LocalRegion, ...]:
    """The scenario's regions on loopback: the first on 127.0.0.2, the next on .3, ..."""
    return tuple(
        LocalRegion(name=name, host=f"127.0.0.{2 + i}", domain=DEFAULT_DOMAIN)
        for i, name in enumerate(names)
    )


class _Host:
    """One device-host process and what it has reported."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.sent = 0
        self.final: dict[str, Any] | None = None
        self.final_seen = asyncio.Event()
        self.error: str | None = None
        self.devices = 0

    async def send(self, message: dict[str, Any]) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write((json.dumps(message, separators=(",", ":")) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await stdin.drain()


class _FleetRun:
    def __init__(self, options: RunOptions, state: Path) -> None:
        self.options = options
        self.scenario = options.scenario
        self.state = state
        self.record = RunRecord(
            scenario=self.scenario.name,
            description=self.scenario.description,
            seed=options.seed,
            regions=tuple(self.scenario.regions),
        )
        self.t0 = time.monotonic()
        self.regions: LocalRegions | None = None
        self.counter: CloudCounter | None = None
        self.hosts: list[_Host] = []
        self.replicator: subprocess.Popen[bytes] | None = None
        self.replicator_port = 0
        self.identities: dict[str, CertifiedKey] = {}
        self.region_of: dict[str, str | None] = {}
        self.faults: dict[str, str] = {}
        self.created = 0
        self.phase = "starting"
        self.last_step = ""
        self._readers: list[asyncio.Task[None]] = []
        self._raw_events: list[DeviceEvent] = []

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from simulators.fleet._output import write_report  # noqa: PLC0415

        interrupted: str | None = None
        with contextlib.ExitStack() as stack:
            self._start_regions(stack)
            # Stopped before the regions (it would log their departure as an outage).
            stack.callback(self._stop_replicator)
            try:
                asyncio.run(self._main())
            except KeyboardInterrupt:
                interrupted = "interrupted (Ctrl-C)"
            except _TerminatedError:
                interrupted = "interrupted (SIGTERM)"
        if interrupted is not None:
            self._collect()
            self.record.duration_s = round(max(0.0, self._now()), 3)
            self.record.notes.append(
                f"{interrupted} at t={self._now():.1f} s; the report is partial"
            )
        report = write_report(self.record, self.options.report_dir)
        if interrupted is not None:
            raise SimulatorError(
                f"{interrupted}: everything the run started was stopped; "
                f"a partial report is in {self.options.report_dir}"
            )
        return report

    def _now(self) -> float:
        return time.monotonic() - self.t0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        terminated = False

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            main.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            await self._play()
        except asyncio.CancelledError:
            if terminated:
                raise _TerminatedError from None
            raise
        finally:
            await self._stop_hosts()
            loop.remove_signal_handler(signal.SIGTERM)

    async def _play(self) -> None:
        scenario = self.scenario
        await asyncio.to_thread(self._provision)
        if scenario.replication != "off":
            self._start_replicator()
        self._progress()
        await self._start_hosts()
        await self._boot()
        self.phase = "running"
        self.t0 = time.monotonic()
        steps = sorted(scenario.timeline, key=lambda s: s.at)
        pending = list(steps)
        next_sample = 0.0
        while True:
            now = self._now()
            while pending and pending[0].at <= now:
                await self._apply(pending.pop(0))
            if now >= next_sample:
                await asyncio.to_thread(self._sample)
                next_sample += _SAMPLE_S
            if now >= scenario.duration_s:
                break
            self._check_hosts()
            await asyncio.sleep(0.1)
        self.record.duration_s = round(self._now(), 3)
        await self._drain()

    # -- set-up ----------------------------------------------------------------------------------

    def _start_regions(self, stack: contextlib.ExitStack) -> None:
        from simulators._regions import LocalRegions  # noqa: PLC0415
        from simulators.fleet._scenario import region_settings  # noqa: PLC0415

        settings = region_settings(self.scenario)
        self.regions = LocalRegions(
            state_dir=self.state / "regions",
            regions=local_regions_for(tuple(self.scenario.regions)),
            broker_kind=self.options.broker,
            **settings,
        )
        stack.enter_context(self.regions)
        if self.regions.broker(self.scenario.regions[0]).kind != "mosquitto":
            self.record.notes.append(
                "mosquitto is not installed: the regions run the embedded amqtt broker "
                "(MQTT 3.1.1 only); apt-get install mosquitto for MQTT 5"
            )
        brokers = {
            name: (self.regions.broker(name).host, self.regions.broker(name).port)
            for name in self.scenario.regions
        }
        self.counter = CloudCounter(brokers)
        self.counter.start()
        stack.callback(self.counter.stop)

    def _provision(self) -> None:
        from simulators.fleet._provision import provision_fleet  # noqa: PLC0415

        assert self.regions is not None
        self.phase = "provisioning"
        self._progress()
        names = fleet_device_names(self.scenario.devices)
        for identity in provision_fleet(self.regions, names):
            self.identities[identity.name] = identity
        self.record.devices = tuple(names)

    def _start_replicator(self) -> None:
        from simulators._broker import free_port  # noqa: PLC0415

        assert self.regions is not None
        endpoints = self.regions.endpoints()
        primary, secondary = self.scenario.regions[0], self.scenario.regions[1]
        control = endpoints["control_plane_url"]
        broker = self.regions.broker(primary)
        back = self.regions.broker(secondary)
        self.replicator_port = free_port("127.0.0.1")
        mode = "jitr" if self.scenario.replication == "jitr" else "complete"
        command = [
            sys.executable, "-m", "device_agent.cli", "replicator", "run",
            "--primary-region", primary, "--secondary-region", secondary,
            "--primary-endpoint-url", control, "--secondary-endpoint-url", control,
            "--primary-data-endpoint-url", endpoints["regions"][primary]["data_url"],
            "--secondary-data-endpoint-url", endpoints["regions"][secondary]["data_url"],
            "--mode", mode, "--feed", f"{broker.host}:{broker.port}",
            # What a DR deployment runs: what devices change in the secondary during an
            # outage (shadows, JITR registrations) is copied back, so both regions converge.
            "--failback", "auto", "--failback-feed", f"{back.host}:{back.port}",
            "--feed-client-id", "iotdr-fleet-replicator",
            "--journal", str(self.state / "replicator.sqlite"),
            "--listen", f"127.0.0.1:{self.replicator_port}", "--json",
        ]  # fmt: skip
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        log = (self.state / "replicator.log").open("ab")
        self.replicator = subprocess.Popen(  # noqa: S603 - our own command
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def _stop_replicator(self) -> None:
        process, self.replicator = self.replicator, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    async def _start_hosts(self) -> None:
        self.phase = "booting"
        count = self.options.processes or max(1, min(os.cpu_count() or 1, 8))
        count = max(1, min(count, len(self.record.devices) or 1))
        names = list(self.record.devices)
        for index in range(count):
            mine = names[index::count]
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "simulators.fleet._host",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=(self.state / f"host-{index}.log").open("ab"),
                start_new_session=True, limit=64 * 1024 * 1024,
            )  # fmt: skip
            host = _Host(index, process)
            host.devices = len(mine)
            self.hosts.append(host)
            self._readers.append(asyncio.create_task(self._read(host)))
            await host.send(self._host_spec(index, mine))

    def _host_spec(self, index: int, names: list[str]) -> dict[str, Any]:
        assert self.regions is not None
        endpoints = self.regions.endpoints()
        dns_host, _, dns_port = endpoints["dns"].rpartition(":")
        return {
            "t0": 0.0,
            "index": index,
            "state_dir": str(self.state / f"host-{index}"),
            "ca": endpoints["ca"],
            "dns": [dns_host, int(dns_port)],
            "device_name": endpoints["device_name"],
            "endpoints": {
                name: [region["endpoint"], int(region["mqtts"].rpartition(":")[2])]
                for name, region in endpoints["regions"].items()
            },
            "agent": _plain(self.scenario.agent),
            "behaviour": {
                "telemetry_interval_s": self.scenario.fleet.telemetry_interval_s,
                "shadow_interval_s": self.scenario.fleet.shadow_interval_s,
                "start_spread_s": self.scenario.fleet.start_spread_s,
            },
            "seed": self.options.seed,
            "devices": [self._device_entry(name) for name in names],
        }

    def _device_entry(self, name: str) -> dict[str, str]:
        identity = self.identities[name]
        return {"name": name, "cert": str(identity.cert_path), "key": str(identity.key_path)}

    async def _read(self, host: _Host) -> None:
        stdout = host.process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "evs" in message:
                host.sent = int(message.get("sent", host.sent))
                for t, device, kind, region, detail in message["evs"]:
                    # Stamped on CLOCK_MONOTONIC; made relative to t = 0 at the end.
                    self._raw_events.append(DeviceEvent(t, device, kind, region, detail))
                    if kind == "connected":
                        self.region_of[device] = region
                    elif kind == "disconnected" and self.region_of.get(device) == region:
                        self.region_of[device] = None
            elif "final" in message:
                host.final = message["final"]
                host.final_seen.set()
            elif "error" in message:
                host.error = str(message["error"])

    async def _boot(self) -> None:
        """Wait until every device is connected (bounded), then the timeline may start."""
        total = len(self.record.devices)
        deadline = time.monotonic() + _BOOT_LIMIT_S + total / 50
        while time.monotonic() < deadline:
            self._check_hosts()
            self._progress()
            if sum(1 for r in self.region_of.values() if r is not None) >= total:
                return
            await asyncio.sleep(0.2)
        connected = sum(1 for r in self.region_of.values() if r is not None)
        self.record.notes.append(
            f"only {connected} of {total} devices had connected when the timeline started"
        )

    def _check_hosts(self) -> None:
        for host in self.hosts:
            if host.error is not None:
                log = self.state / f"host-{host.index}.log"
                msg = f"device host {host.index}: {host.error} (log: {log})"
                raise SimulatorError(msg)
            code = host.process.returncode
            if code is not None and self.phase in ("booting", "running"):
                msg = (
                    f"device host {host.index} exited with code {code} "
                    f"(log: {self.state}/host-{host.index}.log)"
                )
                raise SimulatorError(msg)

    # -- the timeline ----------------------------------------------------------------------------

    async def _apply(self, step: Any) -> None:
        from simulators.fleet import _scenario as sc  # noqa: PLC0415

        assert self.regions is not None
        now = round(self._now(), 3)
        if isinstance(step, sc.FaultStep):
            if step.mode in _CONTROL_PLANE_MODES:
                self.regions.set_control_plane(step.region, _CONTROL_PLANE_MODES[step.mode])  # type: ignore[arg-type]
            else:
                await asyncio.to_thread(self.regions.set_fault, step.region, step.mode)
            self.faults[step.region] = step.mode
            record = StepRecord(now, "fault", step.region, step.mode)
        elif isinstance(step, sc.HealStep):
            await asyncio.to_thread(self.regions.set_fault, step.region, "up")
            self.regions.set_control_plane(step.region, "up")
            self.faults.pop(step.region, None)
            record = StepRecord(now, "heal", step.region, "up")
        elif isinstance(step, sc.DnsStep):
            assert self.regions.dns is not None
            target = next(r for r in self.regions.regions if r.name == step.cname)
            self.regions.dns.zone.set("iot", "CNAME", target.endpoint + ".")
            record = StepRecord(now, "dns", step.cname, "cname")
        elif isinstance(step, sc.CreateDevicesStep):
            done = await self._create_devices(step.count)
            detail = str(step.count) if done else f"{step.count} (failed)"
            record = StepRecord(now, "create_devices", self.scenario.regions[0], detail)
        elif isinstance(step, sc.ReplicatorStep):
            if step.action == "stop":
                await asyncio.to_thread(self._stop_replicator)
            elif self.replicator is None and self.scenario.replication != "off":
                self._start_replicator()
            record = StepRecord(now, "replicator", None, step.action)
        else:  # pragma: no cover - the scenario parser knows every step
            msg = f"unknown timeline step {step!r}"
            raise SimulatorError(msg)
        self.record.steps.append(record)
        self.last_step = f"t={record.t:.0f}s {record.action} {record.region or ''} {record.detail}"
        logger.info("fleet.step", extra={"step": record.action, "region": record.region})

    async def _create_devices(self, count: int) -> bool:
        from simulators.fleet._provision import register_new_devices  # noqa: PLC0415

        assert self.regions is not None
        start = len(self.record.devices)
        names = fleet_device_names(count, start=start + 1)
        try:
            identities = await asyncio.to_thread(
                register_new_devices, self.regions, names, region=self.scenario.regions[0]
            )
        except SimulatorError as exc:
            self.record.notes.append(f"creating {count} devices failed: {exc}")
            return False
        for identity in identities:
            self.identities[identity.name] = identity
        self.record.devices = (*self.record.devices, *names)
        for offset, name in enumerate(names):
            host = self.hosts[(start + offset) % len(self.hosts)]
            await host.send({"cmd": "add", "devices": [self._device_entry(name)]})
        return True

    # -- sampling --------------------------------------------------------------------------------

    def _sample(self) -> None:
        assert self.regions is not None
        t = round(self._now(), 3)
        for name in self.scenario.regions:
            with contextlib.suppress(Exception):  # a busy door must not stop the run
                status = self.regions.gateway(name).status()
                self.record.doors.append(
                    DoorSample(
                        t,
                        name,
                        int(status["connections"]["live"]),
                        int(status["admitted"]),
                        {str(k): int(v) for k, v in status["refused"].items()},
                    )
                )
        self.record.sent_samples.append(SentSample(t, sum(h.sent for h in self.hosts)))
        lag = self._replicator_lag()
        if lag is not None:
            self.record.replicator_lag_s.append((t, lag))
        self._progress()

    def _replicator_lag(self) -> float | None:
        if self.replicator is None or self.replicator.poll() is not None:
            return None
        url = f"http://127.0.0.1:{self.replicator_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("iotdr_replicator_queue_oldest_pending_seconds "):
                with contextlib.suppress(ValueError):
                    return float(line.split()[1])
        return None

    def _progress(self) -> None:
        if self.options.progress is None:
            return
        connected: dict[str, int] = dict.fromkeys(self.scenario.regions, 0)
        for region in self.region_of.values():
            if region is not None:
                connected[region] = connected.get(region, 0) + 1
        with contextlib.suppress(Exception):  # the display must never stop the run
            self.options.progress(
                Progress(
                    phase=self.phase,
                    t=max(0.0, self._now()) if self.phase in ("running", "draining") else 0.0,
                    duration_s=self.scenario.duration_s,
                    connected=connected,
                    devices=len(self.record.devices),
                    sent=sum(h.sent for h in self.hosts),
                    delivered=self.counter.count() if self.counter else 0,
                    faults=tuple(f"{r}: {m}" for r, m in self.faults.items()),
                    last_step=self.last_step,
                )
            )

    # -- the end ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        self.phase = "draining"
        self._progress()
        for host in self.hosts:
            await host.send({"cmd": "quiet"})
        for host in self.hosts:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await host.final_seen.wait()
        assert self.counter is not None
        await asyncio.to_thread(self.counter.settle)
        for host in self.hosts:
            final = host.final or {}
            self.record.sent.update({k: int(v) for k, v in final.get("sent", {}).items()})
            self.record.final_region.update(final.get("region", {}))
            for device, depth in final.get("outbox", {}).items():
                self.record.notes.append(f"{device} still had {depth} messages in its outbox")
        for name in self.record.devices:
            self.record.final_region.setdefault(name, None)
        self._collect()
        reported: dict[str, dict[str, Any]] = {}
        for host in self.hosts:
            reported.update((host.final or {}).get("reported", {}))
        self.record.shadows = await asyncio.to_thread(self._check_shadows, reported)
        self.phase = "done"
        self._progress()

    def _collect(self) -> None:
        """Device events and arrivals into the record, on the timeline's clock (t = 0 at start)."""
        t0 = self.t0
        self.record.events = [
            DeviceEvent(round(e.t - t0, 4), e.device, e.kind, e.region, e.detail)
            for e in self._raw_events
        ]
        if self.counter is not None:
            self.record.arrivals = [
                Arrival(round(a.t - t0, 4), a.region, a.device, a.seq)
                for a in self.counter.arrivals()
            ]

    def _check_shadows(self, reported: dict[str, dict[str, Any]]) -> ShadowCheck:
        """Each device's last reported state, in its region (and, replicated, in the others)."""
        assert self.regions is not None
        deadline = time.monotonic() + _SHADOW_SETTLE_S
        while True:
            diverged = []
            for device, state in reported.items():
                if state.get("seq", 0) == 0:
                    continue
                regions = (
                    list(self.scenario.regions)
                    if self.scenario.replication != "off"
                    else [self.record.final_region.get(device) or self.scenario.regions[0]]
                )
                for region in regions:
                    result = self.regions.shadows(region).store.get(device)
                    document = result.document or {}
                    have = document.get("state", {}).get("reported", {})
                    if any(have.get(k) != v for k, v in state.items()):
                        diverged.append(device)
                        break
            checked = sum(1 for s in reported.values() if s.get("seq", 0))
            if not diverged or time.monotonic() >= deadline:
                return ShadowCheck(checked, len(diverged), tuple(sorted(diverged)[:200]))
            time.sleep(1.0)

    async def _stop_hosts(self) -> None:
        for host in self.hosts:
            await host.send({"cmd": "stop"})
            if host.process.stdin is not None:
                host.process.stdin.close()
        for host in self.hosts:
            try:
                async with asyncio.timeout(20):
                    await host.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    host.process.kill()
                await host.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class _TerminatedError(Exception):
    """SIGTERM arrived."""


def _plain(value: Any) -> Any:
    """Mappings (read-only ones too) as plain JSON-ready dicts."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
