"""A failover drill on this machine: two local regions, one device, real faults, real numbers.

Two regions (real brokers on 127.0.0.2 and 127.0.0.3, each behind a fault
proxy), the Route 53 stand-in, and per trial one device running the real
``FailoverClient`` with its own identity, publishing a numbered QoS 1
message every 50 ms. Per fault kind and trial: inject the fault and time the
move to the secondary, clear it and time the move back, then count the
numbers that never arrived in either region.

Fault kinds: ``down`` (the primary refuses and resets, like a killed broker),
``blackhole`` (the primary goes silent), ``dns_flip`` (both regions up; the
CNAME is flipped and the device runs in DR mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from simulators._broker import BrokerSpec, TLSFiles, start_broker
from simulators._errors import SimulatorError
from simulators._faultproxy import ThreadedFaultProxy
from simulators._pki import FleetPKI
from simulators._topology import DEFAULT_REGIONS
from simulators.dns import ThreadedDNSServer, default_zone

__all__ = ["FAULT_KINDS", "DrillOptions", "run_drill"]

FaultKind = Literal["down", "blackhole", "dns_flip"]
FAULT_KINDS: tuple[FaultKind, ...] = ("down", "blackhole", "dns_flip")


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillOptions:
    """What to drill.

    Attributes:
        faults: the fault kinds, in order.
        trials: trials per fault kind.
        stability_window_s: the device's failback window (the library default is 60 s).
        dr_jitter_s: the device's DR-mode jitter.
        limit_s: give up on a move after this long.
        state_dir: where keys, logs and outboxes go (a temporary folder if None).
        broker: ``auto``, ``mosquitto`` or ``amqtt``.
    """

    faults: tuple[FaultKind, ...] = ("down",)
    trials: int = 1
    stability_window_s: float = 5.0
    dr_jitter_s: float = 5.0
    limit_s: float = 60.0
    state_dir: Path | None = None
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown or not self.faults:
            msg = f"unknown fault kind(s) {unknown}: use {', '.join(FAULT_KINDS)}"
            raise SimulatorError(msg)
        if self.trials < 1:
            msg = "trials must be at least 1"
            raise SimulatorError(msg)


PRIMARY, SECONDARY = DEFAULT_REGIONS


class _Watcher:
    """Collects the message numbers that reach one region (its broker's plain listener)."""

    def __init__(self, host: str, port: int) -> None:
        self.numbers: list[int] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)

        def on_connect(client: mqtt.Client, *_: object) -> None:
            client.subscribe("drill/#", qos=1)
            ready.set()

        def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.numbers.append(json.loads(message.payload)["n"])

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not ready.wait(10):
            self.close()
            msg = f"drill: cannot watch the broker at {host}:{port}"
            raise SimulatorError(msg)

    def take(self) -> list[int]:
        with self._lock:
            found, self.numbers = self.numbers, []
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(slots=True)
class _Stage:
    """The two regions, their proxies and watchers, the DNS server, the PKI."""

    state: Path
    pki: FleetPKI
    dns: ThreadedDNSServer
    proxies: dict[str, ThreadedFaultProxy]
    watchers: dict[str, _Watcher]
    broker_kind: str = ""

    def config(self, name: str, failover: FailoverConfig) -> AgentConfig:
        device = self.pki.issue_device(name)
        return AgentConfig(
            identity=IdentityConfig(
                client_id=device.name,
                cert_path=device.cert_path,
                key_path=device.key_path,
                ca_path=self.pki.ca_path,
            ),
            discovery=DiscoveryConfig(
                name="iot.iotdr.test",
                nameservers=(self.dns.host,),
                port=self.dns.port,
                endpoints={
                    r.name: Endpoint(r.name, r.endpoint, self.proxies[r.name].port)
                    for r in DEFAULT_REGIONS
                },
            ),
            failover=failover,
            outbox=OutboxConfig(path=self.state / f"{device.name}.outbox"),
        )

    def inject(self, kind: FaultKind) -> None:
        if kind == "dns_flip":
            self.dns.zone.set("iot", "CNAME", SECONDARY.endpoint + ".")
        else:
            self.proxies[PRIMARY.name].set_mode(kind)

    def clear(self, kind: FaultKind) -> None:
        if kind == "dns_flip":
            self.dns.zone.set("iot", "CNAME", PRIMARY.endpoint + ".")
        else:
            self.proxies[PRIMARY.name].set_mode("up")


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


async def _connected(
    events: list[tuple[float, AgentEvent]], region: str, after: float, limit: float
) -> float | None:
    """When the device connected to ``region`` after ``after`` (None if not within ``limit`` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for at, event in events:
            if at >= after and event.name == "connected" and event.fields.get("region") == region:
                return at
        await asyncio.sleep(0.02)
    return None


async def _trial(
    stage: _Stage, kind: FaultKind, config: AgentConfig, limit_s: float
) -> dict[str, Any]:
    events: list[tuple[float, AgentEvent]] = []
    topic = f"drill/{config.identity.client_id}"
    published = 0
    stop = asyncio.Event()

    async def publisher(client: FailoverClient) -> None:
        nonlocal published
        while not stop.is_set():
            await client.publish(topic, {"n": published})
            published += 1
            await asyncio.sleep(0.05)

    result: dict[str, Any] = {}
    record = lambda event: events.append((time.monotonic(), event))  # noqa: E731
    async with FailoverClient(config, on_event=record) as client:
        if await _connected(events, PRIMARY.name, 0, limit_s) is None:
            return {"error": "never connected to the primary"}
        task = asyncio.create_task(publisher(client))
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        stage.inject(kind)
        moved = await _connected(events, SECONDARY.name, fault_at, limit_s)
        result["failover_s"] = None if moved is None else moved - fault_at
        await asyncio.sleep(1.0)
        clear_at = time.monotonic()
        stage.clear(kind)
        window = config.failover.stability_window_s
        back = await _connected(events, PRIMARY.name, clear_at, limit_s + window)
        result["failback_s"] = None if back is None else back - clear_at
        stop.set()
        await task
        await client.flush(limit_s)
    await asyncio.sleep(0.5)  # the last messages on their way to the watchers
    received = [n for w in stage.watchers.values() for n in w.take()]
    result["published"] = published
    result["lost"] = len(set(range(published)) - set(received))
    result["duplicates"] = len(received) - len(set(received))
    return result


async def run_drill(options: DrillOptions) -> dict[str, Any]:
    """Run the drill; returns the report (a JSON-ready dict)."""
    with contextlib.ExitStack() as scratch:
        state = options.state_dir or Path(
            scratch.enter_context(tempfile.TemporaryDirectory(prefix="iotdr-drill-"))
        )
        report = await _run(options, state)
        report["settings"]["state_dir"] = str(options.state_dir) if options.state_dir else None
        return report


async def _run(options: DrillOptions, state: Path) -> dict[str, Any]:
    failover = FailoverConfig(
        stability_window_s=options.stability_window_s, dr_jitter_s=options.dr_jitter_s
    )
    with contextlib.ExitStack() as stack:
        stage = _start_stage(state, options, stack)
        results: dict[str, Any] = {}
        for kind in options.faults:
            trials = []
            for trial in range(options.trials):
                config = stage.config(
                    f"drill-{kind}-{trial}",
                    dataclasses.replace(failover, dr_mode=kind == "dns_flip"),
                )
                trials.append(await _trial(stage, kind, config, options.limit_s))
            results[kind] = _kind_report(trials)
    return {
        "drill": "agent_failover",
        "trials": options.trials,
        "settings": {
            **{
                f.name: getattr(failover, f.name)
                for f in dataclasses.fields(failover)
                if not isinstance(getattr(failover, f.name), bool)
            },
            "probe_timeout_s": 2.0,
            "connect_timeout_s": 5.0,
            "broker": stage.broker_kind,
            "state_dir": str(state),
        },
        "results": results,
    }


def _start_stage(state: Path, options: DrillOptions, stack: contextlib.ExitStack) -> _Stage:
    pki = FleetPKI.create(state / "pki")
    dns = stack.enter_context(ThreadedDNSServer(default_zone(), host="127.0.0.1"))
    stage = _Stage(state, pki, dns, {}, {})
    for region in DEFAULT_REGIONS:
        server = pki.issue_server(
            region.name, dns_names=[region.endpoint], ip_addresses=[region.host]
        )
        tls = TLSFiles(ca_path=pki.ca_path, cert_path=server.cert_path, key_path=server.key_path)
        spec = BrokerSpec(
            region=region.name, state_dir=state, host=region.host, tls_port=0, tls=tls
        )
        broker = stack.enter_context(start_broker(spec, kind=options.broker))
        stage.broker_kind = broker.kind
        assert broker.tls_port is not None
        stage.proxies[region.name] = stack.enter_context(
            ThreadedFaultProxy(
                target_host=region.host, target_port=broker.tls_port, listen_host=region.host
            )
        )
        watcher = stage.watchers[region.name] = _Watcher(region.host, broker.port)
        stack.callback(watcher.close)
    return stage


def _kind_report(trials: list[dict[str, Any]]) -> dict[str, Any]:
    def times(key: str) -> list[float]:
        return [t[key] for t in trials if t.get(key) is not None]

    return {
        "failover_s": _summary(times("failover_s")),
        "failback_s": _summary(times("failback_s")),
        "published": sum(t.get("published", 0) for t in trials),
        "lost": sum(t.get("lost", 0) for t in trials),
        "duplicates": sum(t.get("duplicates", 0) for t in trials),
        "incomplete_trials": sum(
            1 for t in trials if t.get("failover_s") is None or t.get("failback_s") is None
        ),
    }
