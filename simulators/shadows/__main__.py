"""Run one region's shadow service: ``python -m simulators.shadows --region R --http H:P``.

Prints one JSON line on stdout once ready, ``{"region", "url", "pid"}``, logs
JSON lines on stderr, and runs until SIGTERM or SIGINT (then exits 0). An
address that is not loopback, a taken port or an unreachable broker is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from simulators._errors import SimulatorError
from simulators.shadows._service import ShadowService, require_loopback


def _address(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        msg = f"{value!r} is not HOST:PORT (an IP address and a port, e.g. 127.0.0.2:8443)"
        raise argparse.ArgumentTypeError(msg)
    return host, port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.shadows",
        description="A local region's Device Shadow service (iot-data HTTP API and MQTT topics).",
    )
    parser.add_argument("--region", required=True, help="The region's name, e.g. us-east-1.")
    parser.add_argument(
        "--http",
        required=True,
        type=_address,
        metavar="HOST:PORT",
        help="Loopback address and port of the iot-data API (port 0 picks one).",
    )
    parser.add_argument(
        "--broker",
        type=_address,
        metavar="HOST:PORT",
        help="The region broker's plain MQTT listener (omit for HTTP only).",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from device_agent.cli import configure_logging  # noqa: PLC0415 - only the entry point logs

    args = _parser().parse_args(argv)
    configure_logging(args.log_level, json_lines=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    host, port = args.http
    try:
        require_loopback(host, what="--http", region=args.region)
        if args.broker is not None:
            require_loopback(args.broker[0], what="--broker", region=args.region)
        service = ShadowService(args.region, http_host=host, http_port=port, broker=args.broker)
        service.start()
    except SimulatorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    try:
        ready = {"region": args.region, "url": service.url, "pid": os.getpid()}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
