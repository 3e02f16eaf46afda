"""Benchmark: the operator tools next to the reference solution's figures.

Three measurements, each printed in one JSON object:

- ``keys``: device keys + CSRs per second as ``iotdr tools bulk-provision``
  makes them (every core), EC P-256 and RSA 2048; the reference took 11,086 s
  for 30,000 RSA keys with openssl, one at a time;
- ``shadows``: ``shadow-test`` (20,000 shadows, 40 workers by default) against
  the local regions with the replicator running; the reference: 824 s on AWS
  (24 shadows/s);
- ``provision``: ``bulk-provision`` things per second through the local
  regions' API at AWS's default quotas (CreateCertificateFromCsr, which AWS
  does not list, at the 10 TPS of an unlisted API); the reference: 6,146 s for
  30,000 by bulk registration (4.9 things/s).

Run by hand, never by the test suite:

    python -m bench.tools                                  # everything, RSA on 30,000 keys
    python -m bench.tools --only keys --rsa-count 2000     # RSA's rate from a sample
    python -m bench.tools --only shadows --shadows 2000

Run as a script, bench/ comes first on ``sys.path``, where ``bench/replicator.py``
would shadow the ``replicator`` package: that folder is taken off first.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # else ``import replicator`` would import bench/replicator.py

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from replicator.tools._bulk import BulkRun
from replicator.tools._context import resolve_regions
from replicator.tools._keys import KeyAlgorithm, generate_many
from replicator.tools._shadows import shadow_test

REFERENCE = {
    "keys_rsa_30000_s": 11086,
    "shadows_20000_s": 824,
    "shadows_per_s": 24.3,
    "provision_30000_s": 6146,
    "provision_per_s": 4.9,
}


def _keys(count: int, algorithm: KeyAlgorithm) -> dict[str, Any]:
    names = [f"bench-{i}" for i in range(count)]
    began = time.perf_counter()
    made = sum(len(batch) for batch in generate_many(names, algorithm))
    elapsed = time.perf_counter() - began
    return {
        "algorithm": algorithm,
        "count": made,
        "elapsed_s": round(elapsed, 3),
        "keys_per_s": round(made / elapsed, 1),
        "projected_30000_s": round(30_000 * elapsed / made, 1),
    }


def _replicator(endpoints: dict[str, Any], state: Path) -> tuple[subprocess.Popen[bytes], int]:
    from simulators._broker import free_port  # noqa: PLC0415

    regions = endpoints["regions"]
    names = list(regions)
    control = endpoints["control_plane_url"]
    port = free_port("127.0.0.1")
    command = [
        sys.executable, "-m", "device_agent.cli", "replicator", "run",
        "--primary-region", names[0], "--secondary-region", names[1],
        "--primary-endpoint-url", control, "--secondary-endpoint-url", control,
        "--primary-data-endpoint-url", regions[names[0]]["data_url"],
        "--secondary-data-endpoint-url", regions[names[1]]["data_url"],
        "--feed", regions[names[0]]["mqtt"], "--feed-client-id", "bench-tools-replicator",
        "--journal", str(state / "replicator.sqlite"), "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}  # fmt: skip
    with (state / "replicator.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the replicator did not get ready")


def _local(state: Path, args: argparse.Namespace, only: set[str]) -> dict[str, Any]:
    from simulators._regions import LocalRegions  # noqa: PLC0415

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    found: dict[str, Any] = {}
    with LocalRegions(state_dir=state, health=None) as regions:
        regions.write_regions_file()
        tools = resolve_regions({"local": state}).connect()
        assert tools.secondary is not None
        primary = tools.client(tools.primary.region)
        secondary = tools.client(tools.secondary.region)
        process, _ = _replicator(regions.endpoints(), state)
        try:
            if "shadows" in only:
                report = shadow_test(primary, secondary, tests=args.shadows, workers=args.workers,
                                     timeout_s=120.0)  # fmt: skip
                data = report.as_dict()
                found["shadows"] = {k: data[k] for k in (
                    "tests", "compared", "not_synced", "errors", "elapsed_s", "shadows_per_s",
                    "latency_s")} | {"workers": args.workers}  # fmt: skip
            if "provision" in only:
                run = BulkRun.open(state, "bench-", args.provision, primary.region,
                                   algorithm="ec", fresh=True)  # fmt: skip
                run.generate_keys(processes=None, progress=None)
                run.provision(primary, workers=16, progress=None)
                seconds = run.timings["provision_s"]
                found["provision"] = {
                    "count": args.provision,
                    "provisioned": len(run.devices),
                    "failed": len(run.failures),
                    "keys_s": round(run.timings["keys_s"], 3),
                    "provision_s": round(seconds, 3),
                    "things_per_s": round(len(run.devices) / seconds, 2),
                    "throttled": sum(tools.throttles().values()),
                }
        finally:
            process.terminate()
            process.wait(30)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=["keys", "shadows", "provision"])
    parser.add_argument("--keys-count", type=int, default=30_000, help="EC keys")
    parser.add_argument("--rsa-count", type=int, default=30_000, help="RSA keys")
    parser.add_argument("--shadows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=40, help="shadow-test's workers")
    parser.add_argument("--provision", type=int, default=300, help="devices to bulk-provision")
    args = parser.parse_args(argv)
    only = set(args.only or ["keys", "shadows", "provision"])
    result: dict[str, Any] = {
        "benchmark": "tools",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "reference": REFERENCE,
    }
    if "keys" in only:
        result["keys"] = [_keys(args.keys_count, "ec"), _keys(args.rsa_count, "rsa")]
    if only & {"shadows", "provision"}:
        with tempfile.TemporaryDirectory(prefix="iotdr-bench-tools-") as scratch:
            result.update(_local(Path(scratch), args, only))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
