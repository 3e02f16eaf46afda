"""Benchmark: the local control plane's calls/s for CreateThing, DescribeThing and ListThings.

Starts the control plane (quotas raised so throttling does not limit it) and,
with ``--events``, a region broker so each CreateThing also builds and
publishes its registry event. For each registry size it creates things up to
that size, then times a bounded number of DescribeThing and ListThings calls
(one boto3 client, one call at a time). Prints one JSON object. Run by hand,
never by the test suite:

    python bench/controlplane.py
    python bench/controlplane.py --sizes 1000,5000 --events
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from simulators import BrokerSpec, start_broker
from simulators.controlplane import start_control_plane

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_iot import IoTClient

REGION = "us-east-1"
UNLIMITED = {"CreateThing": 1e9, "DescribeThing": 1e9, "ListThings": 1e9}


def _rate(calls: int, run: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for n in range(calls):
        run(n)
    return round(calls / (time.perf_counter() - started), 1)


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] <= 0 or sizes[-1] > 20_000:
        msg = "sizes are positive and at most 20,000 (the bench stays bounded)"
        raise argparse.ArgumentTypeError(msg)
    return sizes


def _measure(
    client: IoTClient, *, size: int, existing: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, object]:
    """Grow the registry from ``existing`` to ``size`` things, then time reads at that size."""

    def create(n: int) -> object:
        number = existing + n
        return client.create_thing(
            thingName=f"thing-{number:06d}",
            attributePayload={"attributes": {"model": f"m{number % 7}", "site": "bench"}},
        )

    names = [f"thing-{rng.randrange(size):06d}" for _ in range(args.describe_calls)]
    token: list[str] = []  # the next page's token, if any: pages cycle through the registry

    def list_page(n: int) -> object:
        if token:
            page = client.list_things(maxResults=args.page_size, nextToken=token.pop())
        else:
            page = client.list_things(maxResults=args.page_size)
        if "nextToken" in page:
            token.append(page["nextToken"])
        return page

    return {
        "things": size,
        "create_thing_per_s": _rate(size - existing, create),
        "describe_thing_per_s": _rate(
            args.describe_calls, lambda n: client.describe_thing(thingName=names[n])
        ),
        "list_things_per_s": _rate(args.list_calls, list_page),
        "list_things_page_size": args.page_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_sizes, default=[1000, 5000], help="e.g. 1000,5000")
    parser.add_argument("--describe-calls", type=int, default=1000)
    parser.add_argument("--list-calls", type=int, default=50)
    parser.add_argument("--page-size", type=int, default=100, help="ListThings maxResults")
    parser.add_argument("--events", action="store_true", help="publish registry events too")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    rng = random.Random(7)
    results = []
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-cp-") as scratch:
        state = Path(scratch)
        broker = (
            start_broker(BrokerSpec(region=REGION, state_dir=state, host="127.0.0.2"))
            if args.events
            else None
        )
        brokers = {REGION: (broker.host, broker.port)} if broker else {}
        try:
            with start_control_plane(state_dir=state, brokers=brokers, quotas=UNLIMITED) as plane:
                client: IoTClient = boto3.client(
                    "iot",
                    region_name=REGION,
                    endpoint_url=plane.url,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    config=Config(retries={"total_max_attempts": 1}),
                )
                existing = 0
                for size in args.sizes:
                    results.append(
                        _measure(client, size=size, existing=existing, args=args, rng=rng)
                    )
                    existing = size
                status = plane.status()
        finally:
            if broker is not None:
                broker.stop()
    print(
        json.dumps(
            {
                "benchmark": "controlplane",
                "events": args.events,
                "events_published": (status["regions"].get(REGION) or {}).get("events"),
                "results": results,
                "describe_calls": args.describe_calls,
                "list_calls": args.list_calls,
                "client": "one boto3 client, sequential calls",
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
