"""A device host: many virtual devices in one process, one asyncio loop.

The driver starts one host per core (``python -m simulators.fleet._host``)
and talks to it over pipes, one JSON object per line:

* stdin, first line: the :class:`HostSpec` (devices, where the regions are,
  the agent's settings); then commands: ``{"cmd": "add", "devices": [...]}``
  (devices created during the run), ``{"cmd": "fault", "region": R, "mode":
  M, "fraction": F}`` and ``{"cmd": "heal", "region": R}`` (a device-side
  fault of R switched on and off, see :mod:`simulators.fleet._device_faults`),
  ``{"cmd": "quiet"}`` (stop publishing, send what is left in the outboxes,
  answer with the final state), ``{"cmd": "stop"}``. End of input stops the
  host too.
* stdout: ``{"evs": [[t, device, kind, region, detail], ...], "sent": n, "t": t}``
  about five times a second, ``{"final": {...}}`` after ``quiet``, and
  ``{"error": "..."}`` for a failure the driver should report.

The devices' outboxes share one SQLite file per host (``outbox.sqlite`` in
the host's state directory, written in groups: see
:mod:`simulators.fleet._host_outbox`), so that a host of 5,000 devices holds
three files for them, not 20,000. Logs go to stderr, which the driver sends
to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import resource
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent import (
    AddressCache,
    AgentConfig,
    DiscoveryConfig,
    Endpoint,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
)
from simulators.fleet._device import DeviceBehaviour, VirtualDevice, quiet_devices
from simulators.fleet._device_faults import DeviceFaults, device_ports
from simulators.fleet._host_outbox import HostOutboxes

__all__ = ["HostSpec", "agent_config", "main", "source_addresses"]

logger = logging.getLogger(__name__)

_FLUSH_S = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """What one device host runs.

    Attributes:
        t0: the run's start on ``time.monotonic()`` (records are stamped from it).
        index: this host's number.
        state_dir: where the devices' outboxes go.
        ca: the fleet CA the regions' server certificates chain to.
        dns: the DNS server (host, port).
        device_name: the name devices discover (CNAME) the serving region by.
        endpoints: per region, its endpoint name and mTLS port.
        agent: overrides of the agent's settings (agent.toml's sections).
        behaviour: telemetry and shadow intervals.
        seed: the fleet's seed (each device's is derived from it and its name).
        devices: ``{"name", "cert", "key"}`` for each device.
        source_addresses: loopback addresses the devices' sockets bind to, each
            device always the same one (by its name); empty: the system's choice.
            See :func:`source_addresses`.
    """

    t0: float
    index: int
    state_dir: str
    ca: str
    dns: tuple[str, int]
    device_name: str
    endpoints: dict[str, tuple[str, int]]
    agent: dict[str, Any] = field(default_factory=dict)
    behaviour: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    devices: list[dict[str, str]] = field(default_factory=list)
    source_addresses: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostSpec:
        """Read the spec the driver wrote."""
        return cls(
            t0=float(data["t0"]),
            index=int(data["index"]),
            state_dir=str(data["state_dir"]),
            ca=str(data["ca"]),
            dns=(str(data["dns"][0]), int(data["dns"][1])),
            device_name=str(data["device_name"]),
            endpoints={r: (str(h), int(p)) for r, (h, p) in data["endpoints"].items()},
            agent=dict(data.get("agent", {})),
            behaviour={k: float(v) for k, v in data.get("behaviour", {}).items()},
            seed=int(data.get("seed", 0)),
            source_addresses=tuple(str(a) for a in data.get("source_addresses", [])),
            devices=list(data.get("devices", [])),
        )


DEVICES_PER_SOURCE_ADDRESS = 10_000
"""Devices per source address (about 28,000 source ports per address pair here)."""


def source_addresses(devices: int) -> tuple[str, ...]:
    """The source addresses a fleet of ``devices`` spreads over (none up to 10,000).

    A connection is (source address, source port, door address, door port),
    and one source address has about 28,000 ports for one door: 10,000
    devices, each with its connection, its probes and the connections a
    reconnect leaves in TIME_WAIT, stay well inside that. Beyond, devices
    bind to 127.0.1.1, 127.0.1.2, ... (all of 127/8 is this machine).
    """
    if devices <= DEVICES_PER_SOURCE_ADDRESS:
        return ()
    count = -(-devices // DEVICES_PER_SOURCE_ADDRESS)
    return tuple(f"127.0.1.{n}" for n in range(1, count + 1))


def agent_config(spec: HostSpec, device: dict[str, str]) -> AgentConfig:
    """The agent configuration of one device of the fleet, overrides applied."""
    from simulators.fleet._scenario import apply_agent_overrides  # noqa: PLC0415

    name = device["name"]
    base = AgentConfig(
        identity=IdentityConfig(
            client_id=name,
            cert_path=Path(device["cert"]),
            key_path=Path(device["key"]),
            ca_path=Path(spec.ca),
        ),
        discovery=DiscoveryConfig(
            name=spec.device_name,
            nameservers=(spec.dns[0],),
            port=spec.dns[1],
            endpoints={
                region: Endpoint(region, host, port)
                for region, (host, port) in spec.endpoints.items()
            },
        ),
        mqtt=MQTTConfig(
            port=next(iter(spec.endpoints.values()))[1],
            source_address=(
                spec.source_addresses[zlib.crc32(name.encode()) % len(spec.source_addresses)]
                if spec.source_addresses
                else None
            ),
        ),
        # A process crash loses nothing with ``normal``; ``full`` (an fsync per message,
        # for power cuts) would make a thousand devices on one disk measure the disk.
        outbox=OutboxConfig(
            path=Path(spec.state_dir) / "outbox" / f"{name}.sqlite", synchronous="normal"
        ),
    )
    return apply_agent_overrides(base, spec.agent)


class DeviceHost:
    """The devices of one host and the pipe back to the driver."""

    def __init__(self, spec: HostSpec, out: Any = None) -> None:
        self.spec = spec
        self._out = out or sys.stdout
        self.devices: dict[str, VirtualDevice] = {}
        self.faults = DeviceFaults(seed=spec.seed)
        self._events: list[list[Any]] = []
        self.outboxes = HostOutboxes(Path(spec.state_dir) / "outbox.sqlite")
        # One caching resolver for the host's devices, as a site's or a carrier's is
        # for a real fleet: devices reconnecting at once ask DNS once per name.
        self.addresses = AddressCache()
        behaviour = dict(spec.behaviour)
        self._start_spread_s = behaviour.pop("start_spread_s", 0.0)
        self._behaviour = DeviceBehaviour(**behaviour)

    def __repr__(self) -> str:
        return f"DeviceHost({self.spec.index}, devices={len(self.devices)})"

    def _sink(self, device: str, kind: str, region: str | None, detail: str) -> None:
        t = round(time.monotonic() - self.spec.t0, 4)
        self._events.append([t, device, kind, region, detail])

    async def add(self, devices: list[dict[str, str]], *, created: bool = False) -> None:
        """Start these devices, spread over ``start_spread_s`` (created ones at once)."""
        spread = 0.0 if created else self._start_spread_s
        starts = []
        for device in devices:
            name = device["name"]
            if name in self.devices:
                continue
            rng = random.Random(f"{self.spec.seed}:{name}")  # noqa: S311 - simulation
            config = agent_config(self.spec, device)
            virtual = VirtualDevice(
                config,
                behaviour=self._behaviour,
                rng=rng,
                sink=self._sink,
                **device_ports(self.faults, config),
                outbox=self.outboxes.open(name),
                address_cache=self.addresses,
            )
            self.devices[name] = virtual
            if created:
                self._sink(name, "created", None, "")
            starts.append(self._start(virtual, rng.uniform(0, spread)))
        await asyncio.gather(*starts)

    @staticmethod
    async def _start(device: VirtualDevice, delay_s: float) -> None:
        # A fleet powered on in one second still boots over a few: that spread is
        # the scenario's (fleet.start_spread_s), not a limit of the simulator.
        await asyncio.sleep(delay_s)
        await device.start()

    def write(self, message: dict[str, Any]) -> None:
        """One line to the driver."""
        self._out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._out.flush()

    def flush(self) -> None:
        """Send the events gathered since the last flush."""
        events, self._events = self._events, []
        sent = sum(d.sent for d in self.devices.values())
        self.write({"evs": events, "sent": sent, "t": round(time.monotonic() - self.spec.t0, 3)})

    async def quiet(self) -> dict[str, Any]:
        """Stop publishing, let the outboxes empty (bounded), and say where everyone is."""
        final = await quiet_devices(self.devices)
        return {
            **dataclasses.asdict(final),
            # What the report says a device costs: this process's peak memory and CPU.
            "usage": {
                "devices": len(self.devices),
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "cpu_s": round(time.process_time(), 3),
                "outbox": "one SQLite file per host (WAL, group commit every 50 ms)",
            },
        }

    async def close(self) -> None:
        """Close every device (bounded)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await asyncio.gather(
                    *(d.close() for d in self.devices.values()), return_exceptions=True
                )
        self.outboxes.close()


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _run() -> int:
    reader = await _commands()
    first = await reader.readline()
    if not first:
        return 0
    spec = HostSpec.from_json(json.loads(first))
    host = DeviceHost(spec)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            host.flush()

    flushing = asyncio.create_task(flusher())
    host.outboxes.start()
    # Thousands of long-lived agents make a large heap that the cyclic GC would scan
    # again and again: collect less often, and leave what booted out of the scans.
    gc.set_threshold(50_000, 20, 100)
    starting = asyncio.create_task(host.add(spec.devices))
    starting.add_done_callback(lambda _: gc.freeze())
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            command = json.loads(line)
            kind = command.get("cmd")
            if kind == "add":
                await host.add(list(command.get("devices", [])), created=True)
            elif kind == "fault":
                host.faults.set(command["region"], command["mode"], float(command["fraction"]))
            elif kind == "heal":
                host.faults.clear(command["region"])
            elif kind == "quiet":
                await starting
                final = await host.quiet()
                host.flush()
                host.write({"final": final})
            elif kind == "stop":
                break
    finally:
        starting.cancel()
        await host.close()
        flushing.cancel()
        host.flush()
    return 0


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    """The host process's entry point."""
    logging.basicConfig(
        level=os.environ.get("IOTDR_HOST_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    _raise_file_limit()
    try:
        return asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logger.exception("host.failed")
        sys.stdout.write(json.dumps({"error": f"device host failed: {exc}"}) + "\n")
        sys.stdout.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
