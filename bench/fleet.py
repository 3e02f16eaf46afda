"""Benchmark: a fleet run (``iotdr sim run``) and what it cost this machine.

Runs a scenario (default: the built-in ``region-outage``) with the fleet
simulator and prints one JSON object: the devices, failover and failback
times, messages, connects per door, the verdict, and the cost: wall-clock
seconds, CPU seconds of the driver (regions, doors, counter) and of the
device hosts, and the hosts' memory per device. Run by hand, never by the
test suite:

    python -m bench.fleet --devices 1000
    python -m bench.fleet --scenario blackhole --devices 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from simulators.fleet._driver import RunOptions, run_fleet
from simulators.fleet._scenario import load_scenario, with_devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="region-outage")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    scenario = load_scenario(args.scenario)
    if args.devices is not None:
        scenario = with_devices(scenario, args.devices)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-fleet-") as scratch:
        report = run_fleet(
            RunOptions(
                scenario=scenario,
                report_dir=Path(scratch) / "report",
                seed=args.seed,
                processes=args.processes,
            )
        )
    wall_s = time.monotonic() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "bench": "fleet",
        "scenario": scenario.name,
        "devices": report["devices"],
        "verdict": report["verdict"],
        "failover": report["failover"],
        "failback": report["failback"],
        "detection": report["detection"],
        "messages": report["messages"],
        "connects": report["connects"],
        "device_hosts": report["settings"].get("device_hosts"),
        "wall_s": round(wall_s, 1),
        "driver_cpu_s": round(own.ru_utime + own.ru_stime, 1),
        "children_cpu_s": round(children.ru_utime + children.ru_stime, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))
    return 0 if report["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
