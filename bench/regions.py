"""Benchmark: the local regions as a whole, as ``iotdr sim regions up`` starts them.

Starts :class:`~simulators._regions.LocalRegions` on free ports (control-plane
quotas raised so throttling does not limit the numbers) and measures, in the
primary region:

- control-plane calls per second through boto3's ``iot`` client: CreateThing
  (each one also publishes its registry event on the region's broker),
  DescribeThing and ListThings, one client, one call at a time;
- shadow updates per second over HTTP (raw keep-alive ``http.client``
  connections from a few threads against the region's iot-data URL) and over
  MQTT (one paho client on the region broker's plain listener publishing QoS 1
  ``.../shadow/update`` with a bounded window in flight, counting
  ``.../update/accepted``), with ``--shadows`` shadows present. The shadows
  are created first, directly in the region's store (in process).

Every loop is bounded in count and in time (``--phase-timeout`` per phase);
nothing is asserted. Prints one JSON object. Run by hand, never by the tests:

    python bench/regions.py
    python bench/regions.py --shadows 20000 --http-requests 8000 --mqtt-updates 10000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import paho.mqtt.client as mqtt
from botocore.config import Config
from paho.mqtt.enums import CallbackAPIVersion

from simulators._regions import LocalRegions, RegionPorts

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_iot import IoTClient

    from simulators.shadows import ShadowStore

REGION = "us-east-1"
# "default" sets only the APIs that AWS's table does not list: the listed ones are raised by name.
QUOTAS = {
    "default": 10000.0,
    "CreateThing": 10000.0,
    "DescribeThing": 10000.0,
    "ListThings": 10000.0,
}
MQTT_TOKEN = b'"clientToken":"mqtt-'  # marks this bench's MQTT answers (compact JSON)


def _thing(index: int) -> str:
    return f"thing-{index:06d}"


def _initial(rng: random.Random) -> bytes:
    doc = {
        "state": {
            "desired": {"mode": "auto", "target": 21, "schedule": [6, 22]},
            "reported": {
                "mode": "auto",
                "target": 21,
                "temp": rng.randrange(15, 30),
                "firmware": {"version": "1.4.2", "channel": "stable"},
                "schedule": [6, 22],
            },
        }
    }
    return json.dumps(doc).encode()


def _report(rng: random.Random, token: str) -> bytes:
    doc = {"state": {"reported": {"temp": rng.randrange(15, 30)}}, "clientToken": token}
    return json.dumps(doc).encode()


def _timed(calls: int, timeout_s: float, run: Callable[[int], object]) -> dict[str, Any]:
    """Call ``run(n)`` up to ``calls`` times or until ``timeout_s``; the rate of the successes."""
    deadline = time.monotonic() + timeout_s
    ok = errors = 0
    first_error: str | None = None
    started = time.perf_counter()
    for n in range(calls):
        if time.monotonic() >= deadline:
            break
        try:
            run(n)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the bench goes on
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
        else:
            ok += 1
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "calls": ok + errors,
        "ok": ok,
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(ok / elapsed, 1) if elapsed > 0 else None,
    }
    if first_error is not None:
        result["first_error"] = first_error[:200]
    return result


def bench_control_plane(url: str, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """CreateThing up to ``--things``, then DescribeThing and ListThings at that size."""
    client: IoTClient = boto3.client(
        "iot",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )
    create = _timed(
        args.things,
        args.phase_timeout,
        lambda n: client.create_thing(
            thingName=_thing(n), attributePayload={"attributes": {"model": f"m{n % 7}"}}
        ),
    )
    created = max(1, create["ok"])
    names = [_thing(rng.randrange(created)) for _ in range(args.describe_calls)]
    describe = _timed(
        args.describe_calls,
        args.phase_timeout,
        lambda n: client.describe_thing(thingName=names[n]),
    )
    token: list[str] = []  # the next page's token: pages cycle through the registry

    def list_page(_: int) -> object:
        if token:
            page = client.list_things(maxResults=args.page_size, nextToken=token.pop())
        else:
            page = client.list_things(maxResults=args.page_size)
        if "nextToken" in page:
            token.append(page["nextToken"])
        return page

    listing = _timed(args.list_calls, args.phase_timeout, list_page)
    return {
        "things": created,
        "create_thing": create,
        "describe_thing": describe,
        "list_things": {**listing, "page_size": args.page_size},
        "client": "one boto3 client, sequential calls; CreateThing publishes registry events",
    }


def populate(store: ShadowStore, count: int, rng: random.Random) -> dict[str, Any]:
    """Create ``count`` classic shadows in ``store`` (in process)."""
    started = time.perf_counter()
    rejected = sum(
        store.update(_thing(i), None, _initial(rng)).rejection is not None for i in range(count)
    )
    elapsed = time.perf_counter() - started
    return {
        "shadows": len(store),
        "rejected": rejected,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(count / elapsed, 1) if elapsed > 0 else None,
    }


def bench_http(data_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """UpdateThingShadow from ``--http-threads`` keep-alive connections, bounded in time."""
    address = urlsplit(data_url)
    host, port = address.hostname or "127.0.0.2", address.port or 80
    per_thread = max(1, args.http_requests // args.http_threads)
    deadline = time.monotonic() + args.phase_timeout

    def worker(index: int) -> tuple[int, int]:
        rng = random.Random(args.seed + index)
        connection = http.client.HTTPConnection(host, port, timeout=10)
        ok = failed = 0
        try:
            for _ in range(per_thread):
                if time.monotonic() >= deadline:
                    break
                path = f"/things/{_thing(rng.randrange(args.shadows))}/shadow"
                connection.request("POST", path, body=_report(rng, f"http-{index}"))
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    ok += 1
                else:
                    failed += 1
        finally:
            connection.close()
        return ok, failed

    started = time.perf_counter()
    with ThreadPoolExecutor(args.http_threads) as pool:
        results = list(pool.map(worker, range(args.http_threads)))
    elapsed = time.perf_counter() - started
    ok = sum(r[0] for r in results)
    return {
        "requests": ok + sum(r[1] for r in results),
        "ok": ok,
        "errors": sum(r[1] for r in results),
        "threads": args.http_threads,
        "elapsed_s": round(elapsed, 3),
        "updates_per_s": round(ok / elapsed, 1) if elapsed > 0 else None,
        "client": "http.client keep-alive, one connection per thread",
    }


def bench_mqtt(host: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """QoS 1 ``.../update`` publishes with ``--mqtt-window`` awaiting their answer."""
    rng = random.Random(args.seed)
    slots = threading.Semaphore(args.mqtt_window)
    subscribed = threading.Event()
    lock = threading.Lock()
    counts = {"accepted": 0, "rejected": 0}

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if MQTT_TOKEN not in message.payload:
            return  # an answer to someone else (the HTTP phase's updates, still draining)
        outcome = "accepted" if message.topic.endswith("/accepted") else "rejected"
        with lock:
            counts[outcome] += 1
        slots.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="iotdr-bench-regions")
    client.max_inflight_messages_set(args.mqtt_window)
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    sent = 0
    try:
        client.subscribe(
            [
                ("$aws/things/+/shadow/update/accepted", 1),
                ("$aws/things/+/shadow/update/rejected", 1),
            ]
        )
        if not subscribed.wait(10):
            return {"skipped": "the subscriptions were not granted within 10 s"}
        deadline = time.monotonic() + args.phase_timeout
        started = time.perf_counter()
        while sent < args.mqtt_updates and time.monotonic() < deadline:
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            topic = f"$aws/things/{_thing(rng.randrange(args.shadows))}/shadow/update"
            client.publish(topic, _report(rng, f"mqtt-{sent}"), qos=1)
            sent += 1
        while time.monotonic() < deadline:
            with lock:
                if counts["accepted"] + counts["rejected"] >= sent:
                    break
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()
    return {
        "sent": sent,
        "accepted": counts["accepted"],
        "rejected": counts["rejected"],
        "window": args.mqtt_window,
        "elapsed_s": round(elapsed, 3),
        "updates_per_s": round(counts["accepted"] / elapsed, 1) if elapsed > 0 else None,
        "client": "one paho client, QoS 1, windowed",
    }


def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    """Start the regions, run the phases, stop everything; the report."""
    rng = random.Random(args.seed)
    result: dict[str, Any] = {"benchmark": "regions", "region": REGION}
    started = time.perf_counter()
    with LocalRegions(
        state_dir=state_dir, ports=RegionPorts(), broker_kind=args.broker, quotas=QUOTAS
    ) as regions:
        result["start_s"] = round(time.perf_counter() - started, 2)
        endpoints = regions.endpoints()
        result["broker"] = endpoints["regions"][REGION]["broker"]
        result["control_plane"] = bench_control_plane(endpoints["control_plane_url"], args, rng)
        status = regions.control_plane.status() if regions.control_plane else {}
        result["control_plane"]["throttled"] = status.get("throttled")
        result["control_plane"]["events"] = (status.get("regions", {}).get(REGION) or {}).get(
            "events"
        )
        shadows = regions.shadows(REGION)
        result["populate"] = populate(shadows.store, args.shadows, rng)
        result["shadows_http"] = bench_http(shadows.url, args)
        broker = regions.broker(REGION)
        result["shadows_mqtt"] = bench_mqtt(broker.host, broker.port, args)
        result["shadows_present"] = len(shadows.store)
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"{value} is not a positive count"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--things", type=_positive, default=2_000, help="CreateThing calls")
    parser.add_argument("--describe-calls", type=_positive, default=2_000)
    parser.add_argument("--list-calls", type=_positive, default=100)
    parser.add_argument("--page-size", type=_positive, default=100, help="ListThings maxResults")
    parser.add_argument("--shadows", type=_positive, default=20_000, help="shadows present")
    parser.add_argument("--http-requests", type=_positive, default=4_000)
    parser.add_argument("--http-threads", type=_positive, default=4)
    parser.add_argument("--mqtt-updates", type=_positive, default=5_000)
    parser.add_argument("--mqtt-window", type=_positive, default=100)
    parser.add_argument("--phase-timeout", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-regions-") as scratch:
        result = run(args, Path(scratch))
    result["settings"] = {
        "quotas": QUOTAS,
        "phase_timeout_s": args.phase_timeout,
        "seed": args.seed,
    }
    result["python"] = platform.python_version()
    result["cores"] = os.cpu_count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
