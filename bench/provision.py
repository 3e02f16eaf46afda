"""Benchmark: provisioning a simulated fleet in the local regions (keys, then bulk registration).

Starts the local regions (brokers, doors, control plane, DNS; no health
checker), issues N device identities from the regions' fleet PKI on every core
and registers them in every region in bulk, until each region's door admits
them all. Prints one JSON object: devices, seconds for keys, seconds for
registration (door included), devices per second. Run by hand, never by the
test suite:

    python -m bench.provision --devices 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from simulators._regions import LocalRegions
from simulators.fleet._provision import ProvisionTimes, fleet_device_names, provision_fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--keep", type=Path, help="state directory to keep (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="iotdr-provision-") as scratch:
        state = args.keep or Path(scratch)
        times = ProvisionTimes()
        with LocalRegions(state_dir=state, health=None) as regions:
            devices = provision_fleet(
                regions,
                fleet_device_names(args.devices),
                workers=args.workers,
                times=times,
            )
            region_names = [r.name for r in regions.regions]
    total_s = times.keys_s + times.registration_s
    print(
        json.dumps(
            {
                "benchmark": "provision",
                "devices": len(devices),
                "regions": region_names,
                "keys_s": round(times.keys_s, 3),
                "registration_s": round(times.registration_s, 3),
                "total_s": round(total_s, 3),
                "devices_per_s": round(len(devices) / total_s, 1) if total_s > 0 else None,
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
