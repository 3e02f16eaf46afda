"""``python -m simulators.controlplane --config <file or JSON>``: the control-plane process.

Prints exactly one JSON line on stdout, then nothing more: ``controlplane.ready``
with the bound host, port and pid, or ``controlplane.failed`` with the reason
(``address_in_use``, ``config``, ``start``). Logs go to stderr as JSON lines.
Runs until SIGTERM or SIGINT, then stops serving and flushes queued events.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.cli import configure_logging
from simulators._errors import AddressInUseError, SimulatorError
from simulators.controlplane._process import ControlPlaneConfig, ControlPlaneError
from simulators.controlplane._server import ControlPlaneServer

if TYPE_CHECKING:
    from collections.abc import Sequence


def _report(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


def _detach_stdout() -> None:
    """Point stdout at /dev/null: the parent stops reading after the one report line."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _load(value: str) -> ControlPlaneConfig:
    if value.lstrip().startswith("{"):
        return ControlPlaneConfig.from_json(value, source="--config")
    try:
        text = Path(value).read_text()
    except OSError as exc:
        raise ControlPlaneError(f"control plane: cannot read {value}: {exc.strerror}") from exc
    return ControlPlaneConfig.from_json(text, source=value)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the control plane until SIGTERM or SIGINT; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.controlplane",
        description="The local AWS IoT control plane: moto, regions isolated, with faults.",
    )
    parser.add_argument("--config", required=True, help="a JSON configuration, or its file")
    args = parser.parse_args(argv)
    try:
        config = _load(args.config)
    except ControlPlaneError as exc:
        _report({"event": "controlplane.failed", "error": "config", "message": str(exc)})
        return exc.exit_code
    configure_logging(config.log_level, json_lines=True)
    server = ControlPlaneServer(config)
    try:
        server.start()
    except AddressInUseError as exc:
        _report(
            {
                "event": "controlplane.failed",
                "error": "address_in_use",
                "host": exc.host,
                "port": exc.port,
                "message": str(exc),
            }
        )
        return exc.exit_code
    except SimulatorError as exc:
        _report({"event": "controlplane.failed", "error": "start", "message": str(exc)})
        return exc.exit_code
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    _report(
        {
            "event": "controlplane.ready",
            "host": config.host,
            "port": server.port,
            "pid": os.getpid(),
            "url": f"http://{config.host}:{server.port}",
        }
    )
    _detach_stdout()
    while not stopping.wait(0.1):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
