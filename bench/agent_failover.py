"""Benchmark: how fast the device agent fails over and back, and whether it loses anything.

Runs the failover drill (``simulators._drill``; the same as ``iotdr sim
drill``) for every fault kind: down, blackhole, dns_flip. Prints one JSON
object with failover and failback times (p50/p95/max) and messages lost. Run
by hand, never by the test suite:

    python bench/agent_failover.py --trials 5
"""

from __future__ import annotations

import argparse
import json
import sys

from simulators._drill import FAULT_KINDS, DrillOptions, run_drill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--faults", nargs="+", default=list(FAULT_KINDS), choices=FAULT_KINDS)
    parser.add_argument(
        "--stability-window", type=float, default=10.0, help="failback window (s); library: 60"
    )
    parser.add_argument("--dr-jitter", type=float, default=5.0)
    args = parser.parse_args(argv)
    options = DrillOptions(
        faults=tuple(args.faults),
        trials=args.trials,
        stability_window_s=args.stability_window,
        dr_jitter_s=args.dr_jitter,
    )
    report = run_drill(options)
    report["benchmark"] = report.pop("drill")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
