"""Benchmark: how fast the device agent fails over and back, and whether it loses anything.

Two local regions (real brokers on 127.0.0.2 and 127.0.0.3, each behind a
fault proxy), the project's DNS server, and one FailoverClient per trial
publishing a numbered QoS 1 message every 50 ms. Per fault kind, per trial:
inject the fault, time the move to the secondary; clear it, time the move
back; then count the numbers that never arrived in either region.

Fault kinds: ``down`` (the primary refuses and resets, like a killed broker),
``blackhole`` (the primary goes silent), ``dns_flip`` (both up; the CNAME is
flipped and the agent runs in DR mode).

Prints one JSON object. Run by hand, never by the test suite:

    python bench/agent_failover.py --trials 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_agent import (
    AgentConfig,
    AgentEvent,
    DiscoveryConfig,
    Endpoint,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
    OutboxConfig,
)
from simulators import (
    DEFAULT_REGIONS,
    BrokerSpec,
    FleetPKI,
    ThreadedFaultProxy,
    TLSFiles,
    start_broker,
)
from simulators.dns import ThreadedDNSServer, default_zone

PRIMARY, SECONDARY = DEFAULT_REGIONS


class Watcher:
    """Collects the message numbers that reach one region."""

    def __init__(self, host: str, port: int) -> None:
        self.numbers: list[int] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)

        def on_connect(client: mqtt.Client, *_: object) -> None:
            client.subscribe("bench/#", qos=1)
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not ready.wait(10):
            msg = f"watcher could not connect to {host}:{port}"
            raise RuntimeError(msg)

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.numbers.append(json.loads(message.payload)["n"])

    def take(self) -> list[int]:
        with self._lock:
            found, self.numbers = self.numbers, []
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }


async def _wait(
    events: list[tuple[float, AgentEvent]], region: str, after: float, limit: float
) -> float | None:
    """When the client connected to ``region`` after ``after`` (None if not within ``limit`` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for at, event in events:
            if at >= after and event.name == "connected" and event.fields.get("region") == region:
                return at
        await asyncio.sleep(0.02)
    return None


async def _trial(
    kind: str,
    trial: int,
    config: AgentConfig,
    proxies: dict[str, ThreadedFaultProxy],
    dns: ThreadedDNSServer,
    watchers: dict[str, Watcher],
    limit_s: float,
) -> dict[str, Any]:
    events: list[tuple[float, AgentEvent]] = []
    topic = f"bench/{kind}/{trial}"
    published = 0
    stop = asyncio.Event()

    async def publisher(client: FailoverClient) -> None:
        nonlocal published
        while not stop.is_set():
            await client.publish(topic, {"n": published})
            published += 1
            await asyncio.sleep(0.05)

    result: dict[str, Any] = {}
    async with FailoverClient(
        config, on_event=lambda e: events.append((time.monotonic(), e))
    ) as client:
        if await _wait(events, PRIMARY.name, 0, limit_s) is None:
            return {"error": "never connected to the primary"}
        task = asyncio.create_task(publisher(client))
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        if kind == "dns_flip":
            dns.zone.set("iot", "CNAME", SECONDARY.endpoint + ".")
        else:
            proxies[PRIMARY.name].set_mode(kind)
        moved = await _wait(events, SECONDARY.name, fault_at, limit_s)
        result["failover_s"] = None if moved is None else moved - fault_at
        await asyncio.sleep(1.0)
        clear_at = time.monotonic()
        if kind == "dns_flip":
            dns.zone.set("iot", "CNAME", PRIMARY.endpoint + ".")
        else:
            proxies[PRIMARY.name].set_mode("up")
        back = await _wait(
            events, PRIMARY.name, clear_at, limit_s + config.failover.stability_window_s
        )
        result["failback_s"] = None if back is None else back - clear_at
        stop.set()
        await task
        await client.flush(limit_s)
    await asyncio.sleep(0.5)
    received = [n for w in watchers.values() for n in w.take()]
    result["published"] = published
    result["lost"] = len(set(range(published)) - set(received))
    result["duplicates"] = len(received) - len(set(received))
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="iotdr-bench-agent-"))
    pki = FleetPKI.create(state / "pki")
    brokers = {}
    proxies: dict[str, ThreadedFaultProxy] = {}
    watchers: dict[str, Watcher] = {}
    dns = ThreadedDNSServer(default_zone(), host="127.0.0.1")
    try:
        for region in DEFAULT_REGIONS:
            server = pki.issue_server(
                region.name, dns_names=[region.endpoint], ip_addresses=[region.host]
            )
            tls = TLSFiles(
                ca_path=pki.ca_path, cert_path=server.cert_path, key_path=server.key_path
            )
            spec = BrokerSpec(
                region=region.name, state_dir=state, host=region.host, tls_port=0, tls=tls
            )
            broker = brokers[region.name] = start_broker(spec)
            assert broker.tls_port is not None
            proxy = ThreadedFaultProxy(
                target_host=region.host, target_port=broker.tls_port, listen_host=region.host
            )
            proxy.start()
            proxies[region.name] = proxy
            watchers[region.name] = Watcher(region.host, broker.port)
        dns.start()
        failover = FailoverConfig(
            stability_window_s=args.stability_window, dr_jitter_s=args.dr_jitter
        )
        results: dict[str, Any] = {}
        for kind in args.faults:
            trials = []
            for trial in range(args.trials):
                device = pki.issue_device(f"bench-{kind}-{trial}")
                config = AgentConfig(
                    identity=IdentityConfig(
                        client_id=device.name,
                        cert_path=device.cert_path,
                        key_path=device.key_path,
                        ca_path=pki.ca_path,
                    ),
                    discovery=DiscoveryConfig(
                        name="iot.iotdr.test",
                        nameservers=(dns.host,),
                        port=dns.port,
                        endpoints={
                            r.name: Endpoint(r.name, r.endpoint, proxies[r.name].port)
                            for r in DEFAULT_REGIONS
                        },
                    ),
                    failover=FailoverConfig(**{**_fields(failover), "dr_mode": kind == "dns_flip"}),
                    outbox=OutboxConfig(path=state / f"{device.name}.outbox"),
                )
                trials.append(await _trial(kind, trial, config, proxies, dns, watchers, args.limit))
            results[kind] = {
                "failover_s": _summary(
                    [t["failover_s"] for t in trials if t.get("failover_s") is not None]
                ),
                "failback_s": _summary(
                    [t["failback_s"] for t in trials if t.get("failback_s") is not None]
                ),
                "published": sum(t.get("published", 0) for t in trials),
                "lost": sum(t.get("lost", 0) for t in trials),
                "duplicates": sum(t.get("duplicates", 0) for t in trials),
                "incomplete_trials": sum(
                    1 for t in trials if t.get("failover_s") is None or t.get("failback_s") is None
                ),
            }
        return {
            "benchmark": "agent_failover",
            "trials": args.trials,
            "settings": {
                **{k: v for k, v in _fields(failover).items() if not isinstance(v, bool)},
                "probe_timeout_s": 2.0,
                "connect_timeout_s": 5.0,
                "broker": next(iter(brokers.values())).kind,
            },
            "results": results,
        }
    finally:
        for watcher in watchers.values():
            watcher.close()
        for proxy in proxies.values():
            proxy.stop()
        for broker in brokers.values():
            broker.stop()
        dns.stop()


def _fields(config: FailoverConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--faults",
        nargs="+",
        default=["down", "blackhole", "dns_flip"],
        choices=["down", "blackhole", "dns_flip"],
    )
    parser.add_argument(
        "--stability-window",
        type=float,
        default=10.0,
        help="failback window (s); the library default is 60",
    )
    parser.add_argument("--dr-jitter", type=float, default=5.0)
    parser.add_argument(
        "--limit", type=float, default=60.0, help="give up on a move after this many seconds"
    )
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
