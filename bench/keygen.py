"""Benchmark: bulk device identities (key pair + CSR, optionally a certificate) on every core.

Prints one JSON object: count, elapsed_s, keys_per_s and the machine's cores.
Run by hand, never by the test suite:

    python bench/keygen.py --count 30000
    python bench/keygen.py --count 30000 --sign --algorithm rsa
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from simulators import FleetPKI, device_names, generate_device_identities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--algorithm", choices=["ec", "rsa"], default="ec")
    parser.add_argument("--sign", action="store_true", help="also issue certificates")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--keep", type=Path, help="write here and keep (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="iotdr-keygen-") as scratch:
        base = args.keep or Path(scratch)
        pki = FleetPKI.load_or_create(base / "pki") if args.sign else None
        names = device_names(args.count)
        started = time.perf_counter()
        result = generate_device_identities(
            base / "devices",
            names,
            algorithm=args.algorithm,
            pki=pki,
            workers=args.workers,
        )
        elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "benchmark": "keygen",
                "count": result.count,
                "algorithm": args.algorithm,
                "signed": result.signed,
                "workers": result.workers,
                "cores": os.cpu_count(),
                "elapsed_s": round(elapsed, 3),
                "keys_per_s": round(result.count / elapsed, 1),
                "python": platform.python_version(),
                "reference_openssl_s": 11086 if args.count == 30_000 else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
