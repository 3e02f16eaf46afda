"""Benchmark: a region's shadow service in process, over HTTP (iot-data) and over MQTT.

Prints one JSON object: store updates per second with 20,000 shadows, HTTP
updates per second (raw keep-alive ``http.client`` connections from a thread
pool), and MQTT updates per second (one paho client publishing ``.../update``
with a bounded window in flight, counting ``.../update/accepted``) through a
mosquitto broker started here on 127.0.0.2. Every loop is bounded in count and
time; nothing is asserted. Run by hand, never by the test suite:

    python bench/shadows.py
    python bench/shadows.py --shadows 20000 --store-updates 100000 --mqtt-updates 10000
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
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators import BrokerSpec, start_broker
from simulators.shadows import ShadowService, ShadowStore

HOST = "127.0.0.2"


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


def _report(rng: random.Random) -> bytes:
    doc = {"state": {"reported": {"temp": rng.randrange(15, 30)}}, "clientToken": "bench"}
    return json.dumps(doc).encode()


def bench_store(shadows: int, updates: int, seed: int) -> dict[str, Any]:
    """Populate ``shadows`` classic shadows, then apply ``updates`` reported updates at random."""
    rng = random.Random(seed)
    store = ShadowStore(clock=time.time)
    things = [f"thing-{i:06d}" for i in range(shadows)]
    started = time.perf_counter()
    for thing in things:
        store.update(thing, None, _initial(rng))
    populate_s = time.perf_counter() - started
    requests = [(rng.choice(things), _report(rng)) for _ in range(updates)]
    started = time.perf_counter()
    rejected = sum(
        store.update(thing, None, body).rejection is not None for thing, body in requests
    )
    update_s = time.perf_counter() - started
    return {
        "shadows": len(store),
        "populate_per_s": round(shadows / populate_s, 1),
        "updates": updates,
        "rejected": rejected,
        "elapsed_s": round(update_s, 3),
        "updates_per_s": round(updates / update_s, 1),
    }


def bench_http(requests: int, threads: int, things: int, seed: int) -> dict[str, Any]:
    """``requests`` UpdateThingShadow calls from ``threads`` keep-alive connections."""
    with ShadowService("bench", http_host=HOST) as service:
        port = int(service.url.rsplit(":", 1)[1])
        per_thread = max(1, requests // threads)

        def worker(index: int) -> tuple[int, int]:
            rng = random.Random(seed + index)
            connection = http.client.HTTPConnection(HOST, port, timeout=10)
            ok = failed = 0
            try:
                for _ in range(per_thread):
                    thing = f"thing-{rng.randrange(things):06d}"
                    connection.request("POST", f"/things/{thing}/shadow", body=_report(rng))
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
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(worker, range(threads)))
        elapsed = time.perf_counter() - started
    ok = sum(r[0] for r in results)
    return {
        "requests": per_thread * threads,
        "threads": threads,
        "ok": ok,
        "errors": sum(r[1] for r in results),
        "elapsed_s": round(elapsed, 3),
        "updates_per_s": round(ok / elapsed, 1),
        "client": "http.client keep-alive",
    }


def bench_mqtt(
    updates: int, window: int, things: int, timeout_s: float, seed: int, state_dir: Path
) -> dict[str, Any]:
    """``updates`` QoS 1 publishes to ``.../update``, ``window`` awaiting ``update/accepted``."""
    rng = random.Random(seed)
    with start_broker(BrokerSpec(region="bench", state_dir=state_dir, host=HOST)) as broker:
        if broker.kind != "mosquitto":
            return {"skipped": f"{broker.kind} refuses topics starting with '$'; install mosquitto"}
        with ShadowService("bench", http_host=HOST, broker=(broker.host, broker.port)):
            slots = threading.Semaphore(window)
            subscribed = threading.Event()
            lock = threading.Lock()
            accepted = 0

            def on_subscribe(*_: object) -> None:
                subscribed.set()

            def on_message(_client: object, _userdata: object, _msg: object) -> None:
                nonlocal accepted
                with lock:
                    accepted += 1
                slots.release()

            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="iotdr-bench-shadows")
            client.max_inflight_messages_set(window)
            client.on_subscribe = on_subscribe
            client.on_message = on_message
            client.connect(broker.host, broker.port, keepalive=30)
            client.loop_start()
            try:
                client.subscribe("$aws/things/+/shadow/update/accepted", qos=1)
                if not subscribed.wait(10):
                    return {"skipped": "the subscription was not granted within 10 s"}
                deadline = time.monotonic() + timeout_s
                started = time.perf_counter()
                sent = 0
                while sent < updates and time.monotonic() < deadline:
                    if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                        break
                    thing = f"thing-{rng.randrange(things):06d}"
                    client.publish(f"$aws/things/{thing}/shadow/update", _report(rng), qos=1)
                    sent += 1
                while time.monotonic() < deadline:
                    with lock:
                        if accepted >= sent:
                            break
                    time.sleep(0.005)
                elapsed = time.perf_counter() - started
            finally:
                client.disconnect()
                client.loop_stop()
    return {
        "broker": broker.kind,
        "sent": sent,
        "accepted": accepted,
        "window": window,
        "elapsed_s": round(elapsed, 3),
        "updates_per_s": round(accepted / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadows", type=int, default=20_000)
    parser.add_argument("--store-updates", type=int, default=50_000)
    parser.add_argument("--http-requests", type=int, default=4_000)
    parser.add_argument("--http-threads", type=int, default=8)
    parser.add_argument("--mqtt-updates", type=int, default=5_000)
    parser.add_argument("--mqtt-window", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0, help="MQTT phase bound, seconds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {
        "benchmark": "shadows",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    result["store"] = bench_store(args.shadows, args.store_updates, args.seed)
    result["http"] = bench_http(args.http_requests, args.http_threads, args.shadows, args.seed)
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-shadows-") as scratch:
        result["mqtt"] = bench_mqtt(
            args.mqtt_updates,
            args.mqtt_window,
            args.shadows,
            args.timeout,
            args.seed,
            Path(scratch),
        )
    result["reference_shadows_per_s"] = 24  # the reference solution's replication, for scale
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
