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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulators._errors import SimulatorError
from simulators._topology import DEFAULT_DOMAIN, LocalRegion
from simulators.fleet._cloud import CloudCounter
from simulators.fleet._play import FleetFinal, Progress, TimelinePlayer
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import (
    DeviceEvent,
    DoorSample,
    RunRecord,
    ShadowCheck,
)
from simulators.fleet._scenario import DnsStep, FaultStep, HealStep, ReplicatorStep

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from simulators._pki import CertifiedKey, FleetPKI
    from simulators._regions import LocalRegions
    from simulators.fleet._play import DeviceEntry
    from simulators.fleet._records import Arrival
    from simulators.fleet._scenario import Scenario, Step

__all__ = ["Progress", "RunOptions", "local_regions_for", "run_fleet"]

logger = logging.getLogger(__name__)

_SHADOW_SETTLE_S = 30.0
_QUIET_LIMIT_S = 60.0
_CONTROL_PLANE_MODES = {"control-plane-down": "http503", "control-plane-drop": "drop"}


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
            a broker missing, a device host that died, an interruption: the
            report is then partial).
    """
    from simulators.fleet._output import write_report  # noqa: PLC0415

    scenario = options.scenario
    record = RunRecord(
        scenario=scenario.name,
        description=scenario.description,
        seed=options.seed,
        regions=tuple(scenario.regions),
        settings=_settings(scenario, options),
    )
    interrupted: str | None = None
    with contextlib.ExitStack() as stack:
        state = options.state_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="iotdr-fleet-"))
        )
        state.mkdir(parents=True, exist_ok=True)
        stage = RegionsStage(scenario, state, broker=options.broker)
        fleet = ProcessFleet(
            scenario,
            state,
            seed=options.seed,
            processes=options.processes,
            endpoints=lambda: stage.running().endpoints(),
        )
        player = TimelinePlayer(scenario, stage, fleet, record, progress=options.progress)
        try:
            stage.start(stack, record)
            asyncio.run(_main(player, stage, fleet, options))
        except KeyboardInterrupt:
            interrupted = "interrupted (Ctrl-C)"
        except _TerminatedError:
            interrupted = "interrupted (SIGTERM)"
        player.finish(interrupted=interrupted)
        if interrupted is not None:
            # Ctrl-C reached the whole process group: brokers and the control plane are
            # already gone, and the parts still stopping would each warn about it.
            logging.disable(logging.WARNING)
            stack.callback(logging.disable, logging.NOTSET)
    report = write_report(record, options.report_dir)
    if interrupted is not None:
        msg = (
            f"{interrupted}: everything the run started was stopped; "
            f"a partial report is in {options.report_dir}"
        )
        raise SimulatorError(msg)
    return report


async def _main(
    player: TimelinePlayer, stage: RegionsStage, fleet: ProcessFleet, options: RunOptions
) -> None:
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
        if options.progress is not None:
            options.progress(Progress(phase="provisioning", duration_s=player.scenario.duration_s))
        devices = await asyncio.to_thread(stage.provision, player.scenario.devices)
        stage.start_replicator()
        await player.run(devices)
    except asyncio.CancelledError:
        if terminated:
            raise _TerminatedError from None
        raise
    finally:
        await fleet.stop()
        loop.remove_signal_handler(signal.SIGTERM)


def local_regions_for(names: Sequence[str]) -> tuple[LocalRegion, ...]:
    """The scenario's regions on loopback: the first on 127.0.0.2, the next on .3, ..."""
    return tuple(
        LocalRegion(name=name, host=f"127.0.0.{2 + i}", domain=DEFAULT_DOMAIN)
        for i, name in enumerate(names)
    )


def _settings(scenario: Scenario, options: RunOptions) -> dict[str, object]:
    return {
        "replication": scenario.replication,
        "telemetry_interval_s": scenario.fleet.telemetry_interval_s,
        "shadow_interval_s": scenario.fleet.shadow_interval_s,
        "start_spread_s": scenario.fleet.start_spread_s,
        "agent": _plain(scenario.agent),
        "quotas": {
            region: {
                "connect_per_s": q.connect_per_s,
                "connect_per_client_id_per_s": q.connect_per_client_id_per_s,
                **dict(q.api_tps),
            }
            for region, q in scenario.quotas.items()
        },
        "processes": options.processes or _default_processes(),
        "broker": options.broker,
    }


def _default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# -- the regions -----------------------------------------------------------------------------


class RegionsStage:
    """The local regions as a run's :class:`~simulators.fleet._play.Stage`.

    The regions (with the scenario's quotas), the cloud-side counter on each
    broker, and the replicator as a process of its own (``iotdr replicator
    run --failback auto``, what a DR deployment runs).
    """

    def __init__(self, scenario: Scenario, state: Path, *, broker: str = "auto") -> None:
        self.scenario = scenario
        self.state = state
        self.broker_kind = broker
        self.regions: LocalRegions | None = None
        self.counter: CloudCounter | None = None
        self.replicator: subprocess.Popen[bytes] | None = None
        self.replicator_port = 0
        self.identities: dict[str, CertifiedKey] = {}
        self.jitr_pki: FleetPKI | None = None

    def __repr__(self) -> str:
        return f"RegionsStage({list(self.scenario.regions)}, state={str(self.state)!r})"

    def start(self, stack: contextlib.ExitStack, record: RunRecord) -> None:
        """Start the regions and the counter; ``stack`` stops them (the replicator first)."""
        from simulators._regions import LocalRegions  # noqa: PLC0415
        from simulators.fleet._scenario import region_settings  # noqa: PLC0415

        self.regions = LocalRegions(
            state_dir=self.state / "regions",
            regions=local_regions_for(self.scenario.regions),
            broker_kind=self.broker_kind,  # type: ignore[arg-type]
            **region_settings(self.scenario),
        )
        stack.enter_context(self.regions)
        kind = self.regions.broker(self.scenario.regions[0]).kind
        record.settings["broker"] = kind
        if kind != "mosquitto":
            record.notes.append(
                "mosquitto is not installed: the regions run the embedded amqtt broker "
                "(MQTT 3.1.1 only); apt-get install mosquitto for MQTT 5"
            )
        self.counter = CloudCounter(
            {
                name: (self.regions.broker(name).host, self.regions.broker(name).port)
                for name in self.scenario.regions
            }
        )
        self.counter.start()
        stack.callback(self.counter.stop)
        # Stopped before the regions (it would log their departure as an outage).
        stack.callback(self.stop_replicator)
        if self.scenario.replication == "jitr":
            self._start_jitr(stack)

    def running(self) -> LocalRegions:
        """The running regions (SimulatorError before start)."""
        if self.regions is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        return self.regions

    # -- devices -------------------------------------------------------------------------

    def provision(self, count: int) -> list[DeviceEntry]:
        """The fleet's identities, registered in every region at once (bulk, no events)."""
        from simulators.fleet._provision import provision_fleet  # noqa: PLC0415

        names = fleet_device_names(count)
        for identity in provision_fleet(self.running(), names):
            self.identities[identity.name] = identity
        return [self.entry(name) for name in names]

    def entry(self, name: str) -> DeviceEntry:
        """What a device host needs to run ``name``."""
        identity = self.identities[name]
        return {"name": name, "cert": str(identity.cert_path), "key": str(identity.key_path)}

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """New devices in the primary only, through the AWS APIs (registry events follow)."""
        from simulators.fleet._provision import register_new_devices  # noqa: PLC0415

        identities = await asyncio.to_thread(
            register_new_devices,
            self.running(),
            list(names),
            region=self.scenario.regions[0],
            pki=self.jitr_pki,
        )
        for identity in identities:
            self.identities[identity.name] = identity
        return [self.entry(name) for name in names]

    # -- the timeline ----------------------------------------------------------------------

    async def apply(self, step: Step) -> str:
        """Carry out a fault, heal, DNS or replicator step."""
        regions = self.running()
        if isinstance(step, FaultStep):
            if step.mode in _CONTROL_PLANE_MODES:
                regions.set_control_plane(step.region, _CONTROL_PLANE_MODES[step.mode])  # type: ignore[arg-type]
            else:
                await asyncio.to_thread(regions.set_fault, step.region, step.mode)
            return step.mode
        if isinstance(step, HealStep):
            await asyncio.to_thread(regions.set_fault, step.region, "up")
            regions.set_control_plane(step.region, "up")
            return "up"
        if isinstance(step, DnsStep):
            assert regions.dns is not None
            target = next(r for r in regions.regions if r.name == step.cname)
            regions.dns.zone.set("iot", "CNAME", target.endpoint + ".")
            return "cname"
        if isinstance(step, ReplicatorStep):
            if step.action == "stop":
                await asyncio.to_thread(self.stop_replicator)
            else:
                self.start_replicator()
            return step.action
        msg = f"the local regions cannot carry out {step!r}"
        raise SimulatorError(msg)

    # -- the replicator ----------------------------------------------------------------------

    def start_replicator(self) -> None:
        """``iotdr replicator run`` between the first two regions, unless replication is off."""
        from simulators._broker import free_port  # noqa: PLC0415

        if self.scenario.replication == "off" or (
            self.replicator is not None and self.replicator.poll() is None
        ):
            return
        regions = self.running()
        endpoints = regions.endpoints()
        primary, secondary = self.scenario.regions[0], self.scenario.regions[1]
        control = endpoints["control_plane_url"]
        broker, back = regions.broker(primary), regions.broker(secondary)
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
        self.replicator = self._spawn(command, "replicator.log")

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        with (self.state / log_name).open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - our own command
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip

    def stop_replicator(self) -> None:
        """Stop the replicator (see :func:`_stop_process`)."""
        process, self.replicator = self.replicator, None
        _stop_process(process)

    def _start_jitr(self, stack: contextlib.ExitStack) -> None:
        """JITR in the secondary: a device CA registered in every region, the handler running.

        Devices created during a ``jitr`` run get certificates of this CA. It is
        registered with auto-registration in the secondary, so a device's first
        connect there registers its certificate PENDING_ACTIVATION and is refused,
        and ``iotdr replicator jitr`` activates it; in the primary it is registered
        (for TLS) and the devices are registered ACTIVE as usual.
        """
        from simulators._pki import FleetPKI  # noqa: PLC0415
        from simulators._regions import iot_client  # noqa: PLC0415

        regions = self.running()
        assert regions.control_plane is not None
        url = regions.control_plane.url
        self.jitr_pki = FleetPKI.create(self.state / "jitr-ca", common_name="iotdr fleet device CA")
        pem = self.jitr_pki.ca_path.read_text()
        primary, secondary = self.scenario.regions[0], self.scenario.regions[1]
        ca_id = ""
        for name in self.scenario.regions:
            ca_id = iot_client(url, name).register_ca_certificate(
                caCertificate=pem, setAsActive=True, allowAutoRegistration=name != primary
            )["certificateId"]
        deadline = time.monotonic() + 30
        while any(
            regions.gateway(name).gateway.view.ca_count < 1 for name in self.scenario.regions
        ):
            if time.monotonic() > deadline:
                msg = "the regions' doors did not learn the JITR device CA within 30 s"
                raise SimulatorError(msg)
            time.sleep(0.1)
        policy = self.state / "jitr-policy.json"
        policy.write_text(json.dumps(_DEVICE_POLICY))
        broker = regions.broker(secondary)
        command = [
            sys.executable, "-m", "device_agent.cli", "replicator", "jitr",
            "--region", secondary, "--endpoint-url", url,
            "--feed", f"{broker.host}:{broker.port}", "--feed-client-id", "iotdr-fleet-jitr",
            "--policy", "iotdr-fleet-device", "--policy-document", str(policy),
            "--ca", ca_id, "--primary-region", primary, "--primary-endpoint-url", url,
            "--journal", str(self.state / "jitr.sqlite"), "--sweep-interval", "30", "--json",
        ]  # fmt: skip
        process = self._spawn(command, "jitr.log")
        stack.callback(_stop_process, process)

    # -- measuring -----------------------------------------------------------------------------

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """Each door's counters and the replicator's oldest pending change."""
        return await asyncio.to_thread(self._sample, t)

    def _sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        regions = self.running()
        doors = []
        for name in self.scenario.regions:
            try:
                status = regions.gateway(name).status()
            except Exception:  # noqa: BLE001 - a busy door must not stop the run
                logger.debug("fleet.door_sample_failed", extra={"region": name})
                continue
            doors.append(
                DoorSample(
                    t,
                    name,
                    int(status["connections"]["live"]),
                    int(status["admitted"]),
                    {str(k): int(v) for k, v in status["refused"].items()},
                )
            )
        return doors, self._replicator_lag()

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
                with contextlib.suppress(ValueError, IndexError):
                    return float(line.split()[1])
        return None

    def delivered(self) -> int:
        """Telemetry arrivals so far."""
        return self.counter.count() if self.counter is not None else 0

    async def settle(self) -> list[Arrival]:
        """Wait for the last messages; every arrival (stamped on CLOCK_MONOTONIC)."""
        if self.counter is None:
            return []
        await asyncio.to_thread(self.counter.settle)
        return self.counter.arrivals()

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Each device's last reported state in its region (and, replicated, in the others)."""
        return await asyncio.to_thread(self._check_shadows, final)

    def _check_shadows(self, final: FleetFinal) -> ShadowCheck:
        regions = self.running()
        deadline = time.monotonic() + _SHADOW_SETTLE_S
        reported = {d: s for d, s in final.reported.items() if s.get("seq", 0)}
        while True:
            diverged = []
            for device, state in reported.items():
                where = (
                    list(self.scenario.regions)
                    if self.scenario.replication != "off"
                    else [final.region.get(device) or self.scenario.regions[0]]
                )
                for region in where:
                    document = regions.shadows(region).store.get(device).document or {}
                    have = document.get("state", {}).get("reported", {})
                    if any(have.get(k) != v for k, v in state.items()):
                        diverged.append(device)
                        break
            if not diverged or time.monotonic() >= deadline:
                return ShadowCheck(len(reported), len(diverged), tuple(sorted(diverged)[:200]))
            time.sleep(1.0)


# -- the devices -------------------------------------------------------------------------------


class _Host:
    """One device-host process and what it has reported."""

    def __init__(self, index: int, process: asyncio.subprocess.Process, log: Path) -> None:
        self.index = index
        self.process = process
        self.log = log
        self.sent = 0
        self.final: dict[str, Any] | None = None
        self.final_seen = asyncio.Event()
        self.error: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write((json.dumps(message, separators=(",", ":")) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await stdin.drain()


class ProcessFleet:
    """The devices as a run's :class:`~simulators.fleet._play.Fleet`: device-host processes.

    One host per core (``python -m simulators.fleet._host``), devices dealt out
    round robin, each host running its share in one asyncio loop and
    reporting over a pipe (see :mod:`simulators.fleet._host`).
    """

    def __init__(
        self,
        scenario: Scenario,
        state: Path,
        *,
        seed: int = 0,
        processes: int | None = None,
        endpoints: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.scenario = scenario
        self.state = state
        self.seed = seed
        self.processes = processes or _default_processes()
        self.endpoints = endpoints
        self.hosts: list[_Host] = []
        self._events: list[DeviceEvent] = []
        self._readers: list[asyncio.Task[None]] = []
        self._added = 0
        self.stopping = False

    def __repr__(self) -> str:
        return f"ProcessFleet(hosts={len(self.hosts)})"

    async def start(self, devices: Sequence[DeviceEntry]) -> None:
        """Start the hosts and hand each its share of ``devices``."""
        count = max(1, min(self.processes, len(devices) or 1))
        for index in range(count):
            log = self.state / f"host-{index}.log"
            with log.open("ab") as stderr:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "simulators.fleet._host",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=stderr, start_new_session=True, limit=64 * 1024 * 1024,
                )  # fmt: skip
            host = _Host(index, process, log)
            self.hosts.append(host)
            self._readers.append(asyncio.create_task(self._read(host)))
            await host.send(self._spec(index, list(devices[index::count])))
        self._added = len(devices)

    def _spec(self, index: int, devices: list[DeviceEntry]) -> dict[str, Any]:
        assert self.endpoints is not None
        endpoints = self.endpoints()
        dns_host, _, dns_port = endpoints["dns"].rpartition(":")
        fleet = self.scenario.fleet
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
                "telemetry_interval_s": fleet.telemetry_interval_s,
                "shadow_interval_s": fleet.shadow_interval_s,
                "start_spread_s": fleet.start_spread_s,
            },
            "seed": self.seed,
            "devices": devices,
        }

    async def add(self, devices: Sequence[DeviceEntry]) -> None:
        """Deal created devices out to the hosts, round robin."""
        for device in devices:
            host = self.hosts[self._added % len(self.hosts)]
            self._added += 1
            await host.send({"cmd": "add", "devices": [device]})

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
                self._take(host, message)
            except (ValueError, TypeError, KeyError):
                logger.warning("fleet.host_bad_line", extra={"host": host.index})

    def _take(self, host: _Host, message: dict[str, Any]) -> None:
        if "evs" in message:
            host.sent = int(message.get("sent", host.sent))
            self._events.extend(
                DeviceEvent(float(t), str(d), kind, region, str(detail))
                for t, d, kind, region, detail in message["evs"]
            )
        elif "final" in message:
            host.final = message["final"]
            host.final_seen.set()
        elif "error" in message:
            host.error = str(message["error"])

    def take_events(self) -> list[DeviceEvent]:
        """Events since the last call (stamped on CLOCK_MONOTONIC by the hosts)."""
        events, self._events = self._events, []
        return events

    def sent(self) -> int:
        """Telemetry published so far, every host together."""
        return sum(h.sent for h in self.hosts)

    def check(self) -> None:
        """Raise if a host reported an error or exited."""
        for host in self.hosts:
            if host.error is not None:
                msg = f"device host {host.index}: {host.error} (log: {host.log})"
                raise SimulatorError(msg)
            code = host.process.returncode
            if code is not None and not self.stopping:
                msg = f"device host {host.index} exited with code {code} (log: {host.log})"
                raise SimulatorError(msg)

    async def quiet(self) -> FleetFinal:
        """Every host stops publishing and empties its outboxes; where everyone is."""
        self.stopping = True
        for host in self.hosts:
            await host.send({"cmd": "quiet"})
        final = FleetFinal()
        for host in self.hosts:
            try:
                async with asyncio.timeout(_QUIET_LIMIT_S):
                    await host.final_seen.wait()
            except TimeoutError:
                logger.warning("fleet.host_quiet_timeout", extra={"host": host.index})
                continue
            data = host.final or {}
            final.sent.update({k: int(v) for k, v in data.get("sent", {}).items()})
            final.region.update(data.get("region", {}))
            final.reported.update(data.get("reported", {}))
            final.outbox.update({k: int(v) for k, v in data.get("outbox", {}).items()})
            if isinstance(data.get("usage"), dict):
                final.usage.append(data["usage"])
        return final

    async def stop(self) -> None:
        """Stop every host: ask, then SIGKILL after 20 s (by PID, our own processes only)."""
        self.stopping = True
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


def _stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a service finishes what is in flight), SIGKILL after 15 s; our own only."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


_DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"],
            "Resource": "*",
        }
    ],
}
"""The policy JITR attaches to the devices it activates (the local doors do not read policies)."""


class _TerminatedError(Exception):
    """SIGTERM arrived."""


def _plain(value: Any) -> Any:
    """Mappings (read-only ones too) as plain JSON-ready dicts."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
