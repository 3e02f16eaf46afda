"""The devices of a fleet run as device-host processes.

:class:`ProcessFleet` is the :class:`~simulators.fleet._play.Fleet` of
``iotdr sim run``: one ``python -m simulators.fleet._host`` per core, the
devices dealt out round robin, each host reporting its devices' events over
a pipe (see :mod:`simulators.fleet._host`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._host import source_addresses
from simulators.fleet._play import FleetFinal
from simulators.fleet._records import DeviceEvent
from simulators.fleet._scenario import resolved_agent

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from simulators.fleet._play import DeviceEntry
    from simulators.fleet._scenario import DeviceFaultMode, Scenario

logger = logging.getLogger(__name__)

__all__ = ["ProcessFleet", "default_processes"]

_QUIET_LIMIT_S = 60.0


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


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
        self.processes = processes or default_processes()
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
            "agent": plain(resolved_agent(self.scenario)),
            "behaviour": {
                "telemetry_interval_s": fleet.telemetry_interval_s,
                "shadow_interval_s": fleet.shadow_interval_s,
                "start_spread_s": fleet.start_spread_s,
            },
            "seed": self.seed,
            "source_addresses": list(source_addresses(self.scenario.devices)),
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

    async def set_device_fault(
        self, region: str, mode: DeviceFaultMode, fraction: float = 1.0
    ) -> None:
        """Every host fails the way to ``region`` of its share of ``fraction`` of the devices."""
        for host in self.hosts:
            await host.send({"cmd": "fault", "region": region, "mode": mode, "fraction": fraction})

    async def clear_device_fault(self, region: str) -> None:
        """Every host clears the device-side fault of ``region``."""
        for host in self.hosts:
            await host.send({"cmd": "heal", "region": region})

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


def plain(value: Any) -> Any:
    """Mappings (read-only ones too) as plain JSON-ready dicts."""
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
