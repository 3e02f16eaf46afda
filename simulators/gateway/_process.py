"""The door as processes of its own: one region's gateway served by several processes on one port.

One Python process tops out near 310 mTLS connects/s on this kind of machine
(2.6 ms of the door's CPU per connect), and the door also relays every packet
between the devices and the broker. A fleet of 10,000 devices needs more than
one core for that, so :class:`GatewayProcesses` runs ``processes`` copies of
the region's :class:`~simulators.gateway.RegionGateway`, each a child process
(``python -m simulators.gateway._process CONFIG``) bound to the same port with
SO_REUSEPORT; the kernel spreads new connections over them. Each child follows
the region's registry on its own and has its own admin endpoint; the group
fans a fault out to every child (answered once all have it in force), sums
their counters in :meth:`status`, and stops them by PID.

What is shared and what is not: the fault is the same in every child; the
CONNECT quotas are split evenly (each child takes ``account_per_s / processes``),
so the account quota holds for the region as a whole when the kernel spreads
evenly; the 1 CONNECT/s per client ID is kept per child, so a device whose
reconnects land on different children may connect up to ``processes`` times a
second (the agent's own connect guard keeps it to one). Readiness is each
child's one JSON report line (``gateway.ready`` with its port and admin URL).
A child whose stdin closes (its parent died) stops too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from simulators._broker import TLSFiles
from simulators._child import read_report
from simulators._errors import AddressInUseError, GatewayError
from simulators.gateway._admin import GatewayAdmin
from simulators.gateway._config import ConnectLimits, GatewayConfig
from simulators.gateway._faults import GatewayFault, GatewayFaultMode

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

__all__ = ["GatewayProcesses", "config_from_json", "config_to_json", "main"]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


def config_to_json(config: GatewayConfig) -> str:
    """The parts of ``config`` a door process needs (admission and sync stay at defaults)."""
    faults = config.faults
    return json.dumps(
        {
            "region": config.region,
            "host": config.host,
            "port": config.port,
            "tls": {k: str(v) for k, v in dataclasses.asdict(config.tls).items()},
            "broker": list(config.broker),
            "control_plane_url": config.control_plane_url,
            "limits": dataclasses.asdict(config.limits),
            "faults": {
                "mode": faults.mode.value,
                "latency_s": faults.latency_s,
                "refuse_ratio": faults.refuse_ratio,
                "partial_effect": faults.partial_effect,
                "exempt_client_ids": sorted(faults.exempt_client_ids),
                "exempt_certificate_ids": sorted(faults.exempt_certificate_ids),
            },
            "admin_host": config.admin_host,
            "admin_port": config.admin_port,
            "connect_timeout_s": config.connect_timeout_s,
            "broker_timeout_s": config.broker_timeout_s,
            "backlog": config.backlog,
            "reuse_port": config.reuse_port,
            "device_brokers": [list(b) for b in config.device_brokers],
        },
        sort_keys=True,
    )


def config_from_json(text: str) -> GatewayConfig:
    """Read :func:`config_to_json`'s form.

    Raises:
        GatewayError: not that form.
    """
    try:
        data = json.loads(text)
        return GatewayConfig(
            region=str(data["region"]),
            host=str(data["host"]),
            port=int(data["port"]),
            tls=TLSFiles(**{k: Path(v) for k, v in data["tls"].items()}),
            broker=(str(data["broker"][0]), int(data["broker"][1])),
            control_plane_url=str(data["control_plane_url"]),
            limits=ConnectLimits(**{k: float(v) for k, v in data["limits"].items()}),
            faults=GatewayFault.from_dict(data["faults"], base=GatewayFault()),
            admin_host=str(data["admin_host"]),
            admin_port=None if data["admin_port"] is None else int(data["admin_port"]),
            connect_timeout_s=float(data["connect_timeout_s"]),
            broker_timeout_s=float(data["broker_timeout_s"]),
            backlog=int(data["backlog"]),
            reuse_port=bool(data["reuse_port"]),
            device_brokers=tuple((str(h), int(p)) for h, p in data.get("device_brokers", [])),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        msg = f"gateway process: not a gateway configuration ({type(exc).__name__}: {exc})"
        raise GatewayError(msg) from exc


class _Child:
    """One door process."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.port = 0
        self.admin: GatewayAdmin | None = None

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class GatewayProcesses:
    """A region's door served by ``processes`` child processes sharing one port.

    The same surface as :class:`~simulators.gateway.ThreadedRegionGateway`
    for what the local regions use: ``region``, ``host``, ``port``,
    ``admin_url``, :meth:`start`, :meth:`set_fault`, :meth:`status`,
    :meth:`pending`, :meth:`stop`.

    Args:
        config: the door's configuration (its quotas are the region's: each
            child takes an even share).
        processes: how many children (at least 1).
        log_dir: where each child's log goes (``gateway-REGION-I.log``).
    """

    def __init__(self, config: GatewayConfig, *, processes: int, log_dir: Path) -> None:
        if processes < 1:
            msg = f"gateway {config.region}: processes must be at least 1, not {processes}"
            raise GatewayError(msg, region=config.region)
        limits = ConnectLimits(
            account_per_s=config.limits.account_per_s / processes,
            client_id_per_s=config.limits.client_id_per_s,
        )
        self.config = dataclasses.replace(config, limits=limits, reuse_port=True)
        self.processes = processes
        self.log_dir = log_dir
        self._children: list[_Child] = []

    def __repr__(self) -> str:
        return (
            f"GatewayProcesses({self.region}, {self.host}:{self.port}, "
            f"processes={self.processes}, running={len(self._children)})"
        )

    @property
    def region(self) -> str:
        """The region."""
        return self.config.region

    @property
    def host(self) -> str:
        """The address devices connect to."""
        return self.config.host

    @property
    def port(self) -> int:
        """The mTLS port (resolved by the first child)."""
        return self._children[0].port if self._children else self.config.port

    @property
    def admin_url(self) -> str | None:
        """The first child's admin endpoint (``iotdr sim fault`` fans out through the group)."""
        if not self._children or self._children[0].admin is None:
            return None
        return self._children[0].admin.url

    @property
    def admin_urls(self) -> list[str]:
        """Every child's admin endpoint."""
        return [c.admin.url for c in self._children if c.admin is not None]

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [c.process.pid for c in self._children]

    def start(self) -> None:
        """Start the children (the first picks the port, the others share it); wait for each.

        Raises:
            AddressInUseError: the port is taken.
            GatewayError: a child failed to start or was not ready in time.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            config = self.config
            for index in range(self.processes):
                child = self._spawn(config, index)
                self._children.append(child)
                self._wait_ready(child)
                config = dataclasses.replace(config, port=child.port)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "gateway.processes_started",
            extra={"region": self.region, "port": self.port, "pids": self.pids},
        )

    def _spawn(self, config: GatewayConfig, index: int) -> _Child:
        log_path = self.log_dir / f"gateway-{self.region}-{index}.log"
        with log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches only the program that started it,
            # which stops the children in order (see simulators._broker).
            process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                [sys.executable, "-m", "simulators.gateway._process", config_to_json(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        return _Child(process, log_path)

    def _wait_ready(self, child: _Child) -> None:
        report = read_report(child.process, _READY_TIMEOUT_S)
        if report is not None and report.get("event") == "gateway.ready":
            child.port = int(report["port"])
            child.admin = GatewayAdmin(str(report["admin_url"]))
            return
        if report is not None and report.get("error") == "address_in_use":
            raise AddressInUseError(self.host, int(report["port"]), what=f"gateway {self.region}")
        if report is None:
            reason = f"not ready after {_READY_TIMEOUT_S:g} s"
        else:
            reason = str(report.get("message") or "exited during start-up")
        msg = f"gateway {self.region} process: {reason} (log: {child.log_path})"
        raise GatewayError(msg, region=self.region)

    def _admins(self) -> list[GatewayAdmin]:
        admins = [c.admin for c in self._children if c.admin is not None]
        if not admins:
            msg = f"gateway {self.region} is not running"
            raise GatewayError(msg, region=self.region)
        return admins

    def set_fault(self, fault: GatewayFault | GatewayFaultMode | str) -> GatewayFault:
        """Switch every child's fault; returns it as in force.

        Raises:
            GatewayError: an unknown mode, or a child is unreachable.
        """
        answers = [admin.set_fault(fault) for admin in self._admins()]
        return GatewayFault.from_dict(answers[0], base=self.config.faults)

    def status(self) -> dict[str, Any]:
        """The children's statuses as one: counters summed, the first child's fault and sync."""
        return merge_statuses([admin.status() for admin in self._admins()])

    def pending(self, wanted: Mapping[str, str]) -> int:
        """How many of ``wanted`` (certificate id -> thing) some child does not admit yet."""
        return max(admin.pending(wanted) for admin in self._admins())

    def stop(self) -> None:
        """Stop every child by its PID (SIGTERM, then SIGKILL)."""
        children, self._children = self._children, []
        for child in children:
            child.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def merge_statuses(statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several door processes' statuses as one door's: counters summed, the rest the first's."""
    merged = dict(statuses[0])
    merged["connections"] = {
        key: sum(int(s["connections"].get(key, 0)) for s in statuses)
        for key in statuses[0]["connections"]
    }
    for key in ("admitted", "handshakes", "refused_total", "jitr_registrations"):
        merged[key] = sum(int(s.get(key, 0)) for s in statuses)
    for key in ("refused", "cut", "denied", "policy", "authorizers"):
        counts: dict[str, int] = {}
        for status in statuses:
            for reason, n in status.get(key, {}).items():
                counts[reason] = counts.get(reason, 0) + int(n)
        merged[key] = dict(sorted(counts.items()))
    merged["processes"] = len(statuses)
    return merged


# -- the child ------------------------------------------------------------------------


def _say(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


async def _serve(config: GatewayConfig) -> int:
    from simulators.gateway._gateway import RegionGateway  # noqa: PLC0415

    gateway = RegionGateway(config)
    try:
        await gateway.start()
    except AddressInUseError:
        _say({"event": "gateway.failed", "error": "address_in_use", "port": config.port})
        return 2
    except GatewayError as exc:
        _say({"event": "gateway.failed", "error": "start", "message": str(exc)})
        return 2
    _say(
        {
            "event": "gateway.ready",
            "port": gateway.port,
            "admin_url": gateway.admin_url,
            "pid": os.getpid(),
        }
    )
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    # The parent holds our stdin: when it goes (even by kill -9), so do we.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    watcher = asyncio.create_task(reader.read())
    watcher.add_done_callback(lambda _: done.set())
    try:
        await done.wait()
    finally:
        watcher.cancel()
        await gateway.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulators.gateway._process CONFIG_JSON``: one door process."""
    parser = argparse.ArgumentParser(prog="python -m simulators.gateway._process")
    parser.add_argument("config", help="the gateway configuration as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("IOTDR_GATEWAY_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    with contextlib.suppress(ValueError, OSError):
        import resource  # noqa: PLC0415 - POSIX only

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        config = config_from_json(args.config)
    except GatewayError as exc:
        _say({"event": "gateway.failed", "error": "config", "message": str(exc)})
        return 2
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
