"""Benchmark: fleet runs (``iotdr sim run``) at several sizes and what they cost this machine.

For each size, runs the scenario (default: the built-in ``fleet-scale``, the
primary's door down and back, telemetry every 10 s, every N / 1,000 s beyond
10,000 devices) with the fleet simulator and prints one JSON object per line:
the telemetry and shadow intervals, wall and setup time (provisioning and
boot, before the timeline's t = 0), failover p50/p99/p100, messages lost,
peak connects/s and TLS handshakes/s per region, the failback storm, memory
and CPU per device, and the **bound ratio**: the measured fleet-wide failover
p100 over N / (the secondary's CONNECT quota), the time the quota alone
imposes on N devices reconnecting (AWS: 500 CONNECT/s per account by
default). A ratio near 1 means the fleet moved as fast as the quota allows;
the simulator and the agent added little on top. Run by hand, never by the
test suite:

    python -m bench.fleet --devices 1000,5000,10000,20000
    python -m bench.fleet --scenario blackhole --devices 300
    python -m bench.fleet --devices 10000 --keep /tmp/fleet   # keeps each run's report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent import FailoverConfig
from simulators.fleet._driver import RunOptions, run_fleet
from simulators.fleet._scenario import (
    FaultStep,
    HealStep,
    connect_quota,
    load_scenario,
    resolved_agent,
    with_devices,
)

if TYPE_CHECKING:
    from simulators.fleet._play import Progress
    from simulators.fleet._scenario import Scenario


BOOT_HEADROOM = 1.25
"""The fleet boots at no more than 1 / 1.25 = 80% of the primary's CONNECT quota."""

MESSAGE_RATE = 1000.0
"""Telemetry messages per second the whole fleet sends at most; beyond 10,000
devices the interval grows (20,000 devices: every 20 s). Every message crosses
a device host, a door, a broker and the arrival counter, all Python on the
same 2 cores as the failover's TLS handshakes: at 2,000 messages/s the
steady state alone needs more than 2 cores, and the handshakes of a failover
then time out and are retried as new ones (congestive collapse, measured:
20,000 devices every 10 s never finished booting)."""

SHADOW_RATE = 1000.0 / 30
"""Shadow updates per second the whole fleet sends at most (10,000 devices every
300 s); the replicator reads both regions and writes one for each."""


def _secondary_quota(scenario: Scenario) -> float:
    return connect_quota(scenario, scenario.regions[1])


def stretched(scenario: Scenario) -> Scenario:
    """``fleet-scale`` with its outage and its tail long enough for N devices to move.

    N devices need at least N / quota seconds to reconnect (the bound). The
    outage lasts twice that (at least the scenario's own), so that a fleet
    within the goal (ratio 1.5) has moved before the heal; after the heal,
    the stability window, the failback spread and N / quota again (the
    primary's quota), plus a minute. A fleet that is slower than twice the
    bound shows as devices that never failed over. The fleet boots over at
    least 1.25 x N / (the primary's quota): started faster, the primary's own
    quota would throttle the boot, and devices that time out under it would
    be on the secondary before the fault. Its telemetry and shadow intervals
    grow with N beyond :data:`MESSAGE_RATE` and :data:`SHADOW_RATE`: this
    machine's steady state, not the failover, would otherwise be what is
    measured.
    """
    steps = scenario.timeline
    faults = [s for s in steps if isinstance(s, FaultStep)]
    heals = [s for s in steps if isinstance(s, HealStep)]
    if len(faults) != 1 or len(heals) != 1:
        return scenario
    bound = scenario.devices / _secondary_quota(scenario)
    outage = max(heals[0].at - faults[0].at, 2 * bound)
    heal = dataclasses.replace(heals[0], at=faults[0].at + outage)
    overrides: dict[str, Any] = dict(resolved_agent(scenario).get("failover", {}))
    agent = FailoverConfig(**overrides)
    tail = agent.stability_window_s + agent.failback_spread_s + bound + 60
    duration = max(scenario.duration_s, heal.at + tail)
    timeline = tuple(heal if s is heals[0] else s for s in steps)
    boot = BOOT_HEADROOM * scenario.devices / connect_quota(scenario, scenario.regions[0])
    fleet = dataclasses.replace(
        scenario.fleet,
        start_spread_s=max(scenario.fleet.start_spread_s, boot),
        telemetry_interval_s=max(
            scenario.fleet.telemetry_interval_s, scenario.devices / MESSAGE_RATE
        ),
        shadow_interval_s=max(scenario.fleet.shadow_interval_s, scenario.devices / SHADOW_RATE),
    )
    return dataclasses.replace(scenario, timeline=timeline, duration_s=duration, fleet=fleet)


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def run_size(
    scenario: Scenario,
    *,
    seed: int,
    processes: int | None,
    doors: int | None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """One fleet run; the bench's JSON object for it."""
    phases: dict[str, float] = {}
    started = time.monotonic()

    def progress(state: Progress) -> None:
        phases.setdefault(state.phase, time.monotonic() - started)

    own0, children0 = _cpu()
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-fleet-") as scratch:
        report_dir = (keep / str(scenario.devices)) if keep else Path(scratch) / "report"
        report = run_fleet(
            RunOptions(
                scenario=scenario,
                report_dir=report_dir,
                seed=seed,
                processes=processes,
                door_processes=doors,
                progress=progress,
            )
        )
    wall_s = time.monotonic() - started
    own1, children1 = _cpu()
    devices = int(report["devices"])
    quota = _secondary_quota(scenario)
    bound_s = devices / quota
    failover = report["failover"]
    hosts = report["settings"].get("device_hosts") or {}
    host_cpu = hosts.get("cpu_s")
    return {
        "bench": "fleet",
        "scenario": scenario.name,
        "devices": devices,
        "telemetry_interval_s": scenario.fleet.telemetry_interval_s,
        "shadow_interval_s": scenario.fleet.shadow_interval_s,
        "outage_s": next((h.at for h in scenario.timeline if isinstance(h, HealStep)), 0.0)
        - next((f.at for f in scenario.timeline if isinstance(f, FaultStep)), 0.0),
        "verdict": "PASS" if report["verdict"]["ok"] else "FAIL",
        "problems": report["verdict"]["problems"][:3],
        "wall_s": round(wall_s, 1),
        "setup_s": round(phases.get("running", wall_s), 1),
        "failover": {
            "count": failover.get("count"),
            "p50_s": failover.get("p50_s"),
            "p99_s": failover.get("p99_s"),
            "p100_s": failover.get("max_s"),
        },
        "failback": report["failback"],
        "failback_storm": report.get("failback_storm"),
        "messages": report["messages"],
        "connects": report["connects"],
        "device_refusals": report["refusals"]["devices"],
        "handshakes": report.get("handshakes"),
        "secondary_connect_quota_per_s": quota,
        "bound_s": round(bound_s, 2),
        "bound_ratio": (
            round(failover["max_s"] / bound_s, 2) if failover.get("max_s") is not None else None
        ),
        "per_device": {
            "host_kb": hosts.get("kb_per_device"),
            "host_cpu_ms": round(1000 * host_cpu / devices, 1) if host_cpu and devices else None,
        },
        "device_hosts": hosts,
        "door_processes": report["settings"].get("door_processes"),
        "driver_cpu_s": round(own1 - own0, 1),
        "children_cpu_s": round(children1 - children0, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
    }


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        msg = f"--devices takes sizes separated by commas (1000,5000), not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="fleet-scale")
    parser.add_argument("--devices", type=_sizes, default=None, help="sizes, e.g. 1000,5000")
    parser.add_argument("--processes", type=int, default=None, help="device-host processes")
    parser.add_argument("--door-processes", type=int, default=None, help="processes per door")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep each run's report in DIR/SIZE"
    )
    args = parser.parse_args(argv)

    base = load_scenario(args.scenario)
    ok = True
    for size in args.devices or [base.devices]:
        result = run_size(
            stretched(with_devices(base, size)),
            seed=args.seed,
            processes=args.processes,
            doors=args.door_processes,
            keep=args.keep,
        )
        ok = ok and result["verdict"] == "PASS"
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
