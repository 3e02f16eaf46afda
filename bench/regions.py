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
  are created first, directly in the region's store (in process);
- the door (the region's gateway, in this process): mTLS connects per second
  admitted at each ``--devices`` count (1,000 by default; ``--devices 1000
  10000`` adds the 10,000 step), every device with its own certificate
  registered in the region through boto3, connecting from ``--load-workers``
  separate processes over raw TLS sockets from their own 127.0.0.x source
  addresses and held open (at most ``--max-live``: each live device costs the
  gateway two of the process's files); then the gateway's CPU per 1,000
  msg/s: ``--publishers`` devices publishing QoS 1 at ``--msg-rate`` through
  the door, this process's CPU time (and the gateway thread's) measured while
  the load runs elsewhere, net of the same process's idle CPU.

Every loop is bounded in count and in time (``--phase-timeout`` per phase,
``--door-timeout`` per door step); nothing is asserted. Prints one JSON
object. Run by hand, never by the tests:

    python bench/regions.py
    python bench/regions.py --shadows 20000 --http-requests 8000 --mqtt-updates 10000
    python bench/regions.py --devices 1000 10000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import random
import resource
import select
import selectors
import socket
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import paho.mqtt.client as mqtt
from botocore.config import Config
from paho.mqtt.enums import CallbackAPIVersion

from simulators import generate_device_identities
from simulators._regions import LocalRegions, RegionPorts, attach_device_policy

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from mypy_boto3_iot import IoTClient

    from simulators.gateway import ThreadedRegionGateway
    from simulators.shadows import ShadowStore

REGION = "us-east-1"
# "default" sets only the APIs that AWS's table does not list: the listed ones are raised by name.
QUOTAS = {
    "default": 10000.0,
    "CreateThing": 10000.0,
    "DescribeThing": 10000.0,
    "ListThings": 10000.0,
    "RegisterCertificateWithoutCA": 10000.0,
    "AttachThingPrincipal": 10000.0,
    "AttachPolicy": 10000.0,
    "CreatePolicy": 10000.0,
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


# -- the door: mTLS connects admitted, and the gateway's CPU per 1,000 msg/s ---------------------


def _device(index: int) -> str:
    return f"door-{index:06d}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keep-alive 1,200 s (AWS's maximum)."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + (1200).to_bytes(2, "big") + len(name).to_bytes(2, "big") + name
    return b"\x10" + _varint(len(body)) + body


def _publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """MQTT PUBLISH at QoS 1."""
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


DISCONNECT = b"\xe0\x00"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
MAX_IN_FLIGHT = 2_000  # per load worker: QoS 1 PUBLISHes awaiting their PUBACK


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSettings:
    """What a load worker needs: where the door is, who it is, how patient it is."""

    index: int
    host: str
    port: int
    endpoint: str
    source: str
    ca_pem: str
    devices_dir: str
    connect_timeout_s: float
    attempts: int


class DoorLoad:
    """In a load worker process: devices connected through the door over raw TLS sockets."""

    def __init__(self, settings: LoadSettings) -> None:
        self.settings = settings
        self.held: collections.deque[ssl.SSLSocket] = collections.deque()
        self._lock = threading.Lock()

    def _connect_one(self, name: str) -> tuple[str, ssl.SSLSocket | None, float]:
        """One attempt: TCP, TLS (the device's certificate, SNI), CONNECT, CONNACK."""
        settings = self.settings
        folder = Path(settings.devices_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=settings.ca_pem)
        context.load_cert_chain(folder / f"{name}.crt", folder / f"{name}.key")
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tls: ssl.SSLSocket | None = None
        started = time.perf_counter()
        try:
            # The port is picked at connect(), per destination: several sources do not share it.
            raw.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            raw.bind((settings.source, 0))
            raw.settimeout(settings.connect_timeout_s)
            raw.connect((settings.host, settings.port))
            tls = context.wrap_socket(raw, server_hostname=settings.endpoint)
            tls.sendall(_connect_packet(name))
            answer = b""
            while len(answer) < 4:
                chunk = tls.recv(4 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            outcome = "timeout"
        except ConnectionRefusedError:
            outcome = "refused"
        except ConnectionResetError:
            outcome = "reset"
        except ssl.SSLError as exc:
            outcome = f"tls_{exc.reason or 'error'}".lower()
        except OSError as exc:
            outcome = f"os_error_{exc.errno}"
        else:
            if len(answer) < 4:
                outcome = "closed_without_connack"  # AWS's refusal of a 3.1.1 client
            elif answer[:2] != b"\x20\x02":
                outcome = "not_a_connack"
            elif answer[3] != 0:
                outcome = f"connack_{answer[3]}"
            else:
                return "admitted", tls, time.perf_counter() - started
        (tls or raw).close()
        return outcome, None, time.perf_counter() - started

    def _hold(self, tls: ssl.SSLSocket, max_live: int) -> None:
        with self._lock:
            self.held.append(tls)
            oldest = self.held.popleft() if len(self.held) > max_live else None
        if oldest is not None:
            _disconnect(oldest)

    def connect(
        self, names: list[str], max_live: int, threads: int, timeout_s: float
    ) -> dict[str, Any]:
        """Connect ``names`` from ``threads`` threads, retrying refusals; hold ``max_live``."""
        deadline = time.monotonic() + timeout_s
        pending = list(reversed(names))
        outcomes: collections.Counter[str] = collections.Counter()
        latencies: list[float] = []
        failed: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            while time.monotonic() < deadline:
                with lock:
                    if not pending:
                        return
                    name = pending.pop()
                for attempt in range(self.settings.attempts):
                    outcome, tls, latency = self._connect_one(name)
                    with lock:
                        outcomes[outcome] += 1
                    if tls is not None:
                        with lock:
                            latencies.append(latency)
                        self._hold(tls, max_live)
                        break
                    pause = min(2.0, 0.25 * 2**attempt)  # refused ones retry, as devices do
                    if time.monotonic() + pause >= deadline:
                        break
                    time.sleep(pause)
                else:
                    with lock:
                        failed.append(name)

        started = time.monotonic()
        pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(max(0.0, deadline - time.monotonic()) + 30.0)
        finished = time.monotonic()
        return {
            "worker": self.settings.index,
            "started": started,
            "finished": finished,
            "admitted": len(latencies),
            "failed": len(failed) + len(pending),
            "outcomes": dict(outcomes),
            "latencies_s": latencies,
            "held": len(self.held),
        }

    def publish(self, rate: float, seconds: float, payload_size: int) -> dict[str, Any]:
        """QoS 1 PUBLISH at ``rate`` per second, round robin over the held connections."""
        sockets = list(self.held)
        if not sockets:
            return {"worker": self.settings.index, "sent": 0, "acked": 0, "error": "no devices"}
        selector = selectors.DefaultSelector()
        buffers = [bytearray() for _ in sockets]
        for index, tls in enumerate(sockets):
            tls.setblocking(False)
            selector.register(tls, selectors.EVENT_READ, index)
        topics = [f"dt/{index}/telemetry".encode() for index in range(len(sockets))]
        payload = (b'{"t":21.5,"pad":"' + b"x" * payload_size)[: payload_size - 2] + b'"}'
        total = int(seconds * rate)
        sent = acked = stalls = 0
        first_error: str | None = None
        started = time.monotonic()
        stop_at, drain_until = started + seconds, started + seconds + 5.0
        while True:
            now = time.monotonic()
            if ((now >= stop_at or sent >= total) and acked >= sent) or now >= drain_until:
                break
            due = min(int((now - started) * rate) + 1, total)
            while sent < due and sent - acked < MAX_IN_FLIGHT:
                index = sent % len(sockets)
                packet = _publish_packet(topics[index], sent % 65535 + 1, payload)
                try:
                    stalls += _send_nonblocking(sockets[index], packet, drain_until)
                except OSError as exc:
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                    stop_at = drain_until = now
                    break
                sent += 1
            ahead = (sent + 1) / rate - (now - started)
            for key, _ in selector.select(min(0.05, max(0.0, ahead)) if now < stop_at else 0.05):
                index = int(key.data)
                if not _receive(sockets[index], buffers[index]):
                    selector.unregister(sockets[index])
                acked += _take_pubacks(buffers[index])
        elapsed = time.monotonic() - started
        selector.close()
        for tls in sockets:
            tls.setblocking(True)
        result: dict[str, Any] = {
            "worker": self.settings.index,
            "connections": len(sockets),
            "sent": sent,
            "acked": acked,
            "elapsed_s": elapsed,
            "send_stalls": stalls,
        }
        if first_error is not None:
            result["first_error"] = first_error[:200]
        return result

    def close(self) -> int:
        """DISCONNECT and close every held connection; how many."""
        with self._lock:
            held, self.held = list(self.held), collections.deque()
        for tls in held:
            _disconnect(tls)
        return len(held)


def _send_nonblocking(tls: ssl.SSLSocket, data: bytes, deadline: float) -> int:
    """Send ``data`` (one TLS record) on a non-blocking socket; how many times it had to wait."""
    waits = 0
    while True:
        try:
            tls.send(data)  # without partial writes, all of it or SSLWantWriteError
        except (ssl.SSLWantWriteError, BlockingIOError):
            waits += 1
            if time.monotonic() >= deadline:
                msg = "the door takes no more bytes"
                raise TimeoutError(msg) from None
            select.select([], [tls], [], 0.05)
        else:
            return waits


def _receive(tls: ssl.SSLSocket, buffer: bytearray) -> bool:
    """Read what a non-blocking socket has into ``buffer``; False once the door closed it."""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        if not chunk:
            return False
        buffer += chunk


def _take_pubacks(buffer: bytearray) -> int:
    """Remove the whole packets at the start of ``buffer``; how many were PUBACKs."""
    count = 0
    while len(buffer) >= 2:
        length, shift, offset = 0, 0, 1
        while True:  # the remaining length: up to 4 bytes, 7 bits each
            if offset >= len(buffer):
                return count
            byte = buffer[offset]
            length += (byte & 0x7F) << shift
            shift, offset = shift + 7, offset + 1
            if not byte & 0x80 or offset == 5:
                break
        if len(buffer) < offset + length:
            return count
        if buffer[0] >> 4 == 4:
            count += 1
        del buffer[: offset + length]
    return count


def _disconnect(tls: ssl.SSLSocket) -> None:
    with contextlib.suppress(OSError):
        tls.settimeout(1.0)
        tls.sendall(DISCONNECT)
    with contextlib.suppress(OSError):
        tls.close()


def load_worker(connection: Connection, settings: LoadSettings) -> None:
    """A load worker process: run commands from the parent until ``stop``."""
    load = DoorLoad(settings)
    try:
        while True:
            command, options = connection.recv()
            if command == "stop":
                break
            try:
                answer = getattr(load, command)(**options)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
                answer = {"worker": settings.index, "error": f"{type(exc).__name__}: {exc}"}
            connection.send(answer)
    finally:
        load.close()
        connection.close()


class LoadGenerators:
    """The load worker processes (spawned: the parent runs threads) and their pipes."""

    def __init__(self, settings: list[LoadSettings]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[BaseProcess] = []
        for each in settings:
            parent, child = context.Pipe()
            process = context.Process(
                target=load_worker, args=(child, each), name=f"door-load-{each.index}", daemon=True
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    def __len__(self) -> int:
        return len(self._pipes)

    def call(self, command: str, options: list[dict[str, Any]], timeout_s: float) -> list[Any]:
        """Send ``command`` to every worker at once (its own options each); their answers."""
        for pipe, each in zip(self._pipes, options, strict=True):
            pipe.send((command, each))
        deadline = time.monotonic() + timeout_s
        answers = []
        for pipe in self._pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                msg = f"load worker gave no answer to {command!r} within {timeout_s:.0f} s"
                raise TimeoutError(msg)
            answers.append(pipe.recv())
        return answers

    def stop(self) -> None:
        """Stop every worker (by its process: terminate after a grace period)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", {}))
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()


class CpuMeter:
    """This process's CPU time, and its gateway thread's (Linux per-thread clock), in seconds."""

    def __init__(self, region: str) -> None:
        thread = next((t for t in threading.enumerate() if t.name == f"gateway-{region}"), None)
        self._clock: int | None = None
        if (
            thread is not None
            and thread.ident is not None
            and hasattr(time, "pthread_getcpuclockid")
        ):
            self._clock = time.pthread_getcpuclockid(thread.ident)

    def read(self) -> tuple[float, float | None]:
        """(process CPU, gateway thread CPU or None)."""
        gateway = time.clock_gettime(self._clock) if self._clock is not None else None
        return time.process_time(), gateway

    def since(self, mark: tuple[float, float | None]) -> tuple[float, float | None]:
        """CPU seconds used since ``mark``."""
        process, gateway = self.read()
        return process - mark[0], (
            gateway - mark[1] if gateway is not None and mark[1] is not None else None
        )


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1] * 1000, 1)}


def register_devices(
    url: str, directory: Path, names: list[str], threads: int, timeout_s: float
) -> dict[str, Any]:
    """RegisterCertificateWithoutCA (ACTIVE), CreateThing, AttachThingPrincipal, AttachPolicy."""
    local = threading.local()
    deadline = time.monotonic() + timeout_s

    def client() -> IoTClient:
        if not hasattr(local, "iot"):
            local.iot = boto3.client(
                "iot",
                region_name=REGION,
                endpoint_url=url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"total_max_attempts": 3}, read_timeout=30),
            )
        iot: IoTClient = local.iot
        return iot

    def register(name: str) -> str | None:
        if time.monotonic() >= deadline:
            return "deadline"
        iot = client()
        try:
            arn = iot.register_certificate_without_ca(
                certificatePem=(directory / f"{name}.crt").read_text(), status="ACTIVE"
            )["certificateArn"]
            iot.create_thing(thingName=name)
            iot.attach_thing_principal(thingName=name, principal=arn)
            attach_device_policy(iot, arn)  # AWS admits no certificate without a policy
        except Exception as exc:  # noqa: BLE001 - counted and reported
            return f"{type(exc).__name__}: {exc}"[:200]
        return None

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        errors = [e for e in pool.map(register, names) if e is not None]
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "devices": len(names),
        "errors": len(errors),
        "elapsed_s": round(elapsed, 2),
        "devices_per_s": round(len(names) / elapsed, 1) if elapsed > 0 else None,
        "threads": threads,
    }
    if errors:
        result["first_error"] = errors[0]
    return result


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_for_registry(door: ThreadedRegionGateway, certificates: int, timeout_s: float) -> bool:
    """Wait until the door's registry view holds ``certificates``; whether it did."""
    return _wait(lambda: door.status()["registry"]["certificates"] >= certificates, timeout_s)


def _door_counters(status: dict[str, Any]) -> dict[str, Any]:
    return {"admitted": status["admitted"], "refused": dict(status["refused"])}


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    refused = {
        reason: count - before["refused"].get(reason, 0)
        for reason, count in after["refused"].items()
        if count != before["refused"].get(reason, 0)
    }
    return {"admitted": after["admitted"] - before["admitted"], "refused": refused}


def bench_connects(
    regions: LocalRegions,
    load: LoadGenerators,
    count: int,
    max_live: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Connect ``count`` devices through the door from every worker at once."""
    door = regions.gateway(REGION)
    meter = CpuMeter(REGION)
    names = [_device(i) for i in range(count)]
    shares = [names[i :: len(load)] for i in range(len(load))]
    per_worker_live = max(1, max_live // len(load))
    before = _door_counters(door.status())
    mark = meter.read()
    answers = load.call(
        "connect",
        [
            {
                "names": share,
                "max_live": per_worker_live,
                "threads": args.connect_threads,
                "timeout_s": args.door_timeout,
            }
            for share in shares
        ],
        args.door_timeout + 120,
    )
    process_cpu, gateway_cpu = meter.since(mark)
    status = door.status()
    errors = [a["error"] for a in answers if "error" in a]
    if errors:
        return {"devices": count, "error": errors[0]}
    first = min(a["started"] for a in answers)
    last = max(a["finished"] for a in answers)
    elapsed = max(last - first, 1e-9)
    admitted = sum(a["admitted"] for a in answers)
    outcomes: collections.Counter[str] = collections.Counter()
    for answer in answers:
        outcomes.update(answer["outcomes"])
    latencies = [latency for a in answers for latency in a["latencies_s"]]
    return {
        "devices": count,
        "admitted": admitted,
        "failed": sum(a["failed"] for a in answers),
        "elapsed_s": round(elapsed, 2),
        "admitted_per_s": round(admitted / elapsed, 1),
        "attempts": dict(sorted(outcomes.items())),
        "connect_ms": _percentiles(latencies),
        "held_at_most": min(count, per_worker_live * len(load)),
        "live_at_end": status["connections"]["live"],
        "door": _delta(before, _door_counters(status)),
        "cpu": {
            "process_s": round(process_cpu, 2),
            "gateway_thread_s": round(gateway_cpu, 2) if gateway_cpu is not None else None,
            "process_ms_per_connect": round(process_cpu / admitted * 1000, 2) if admitted else None,
            "gateway_ms_per_connect": (
                round(gateway_cpu / admitted * 1000, 2) if admitted and gateway_cpu else None
            ),
        },
    }


def _close_all(regions: LocalRegions, load: LoadGenerators) -> int:
    closed = sum(int(n) for n in load.call("close", [{}] * len(load), 120))
    door = regions.gateway(REGION)
    _wait(lambda: door.status()["connections"]["live"] == 0, 60)
    return closed


def bench_publish(
    regions: LocalRegions, load: LoadGenerators, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The gateway's CPU for QoS 1 PUBLISHes at ``--msg-rate``, net of its idle CPU."""
    door = regions.gateway(REGION)
    meter = CpuMeter(REGION)
    time.sleep(1.1)  # AWS's one CONNECT per second per client ID: these connected just now
    names = [_device(i) for i in range(count)]
    connected = load.call(
        "connect",
        [
            {"names": names[i :: len(load)], "max_live": count, "threads": 4, "timeout_s": 120}
            for i in range(len(load))
        ],
        240,
    )
    publishers = sum(a.get("admitted", 0) for a in connected)
    idle_mark = meter.read()
    time.sleep(args.idle_seconds)
    idle_process, idle_gateway = meter.since(idle_mark)
    rate = args.msg_rate / len(load)
    mark = meter.read()
    answers = load.call(
        "publish",
        [{"rate": rate, "seconds": args.publish_seconds, "payload_size": args.payload}] * len(load),
        args.publish_seconds + 60,
    )
    process_cpu, gateway_cpu = meter.since(mark)
    window = max(a.get("elapsed_s", 0.0) for a in answers)
    sent = sum(a.get("sent", 0) for a in answers)
    acked = sum(a.get("acked", 0) for a in answers)
    idle_rate = idle_process / args.idle_seconds
    idle_gateway_rate = idle_gateway / args.idle_seconds if idle_gateway is not None else None

    def per_1000(cpu: float | None, idle: float | None) -> dict[str, float | None]:
        """Core-seconds per 1,000 messages = share of a core at 1,000 msg/s, in percent."""
        if cpu is None or not acked:
            return {"raw": None, "net_of_idle": None}
        net = cpu - (idle or 0.0) * window
        return {
            "raw": round(cpu / acked * 1000 * 100, 2),
            "net_of_idle": round(net / acked * 1000 * 100, 2),
        }

    result: dict[str, Any] = {
        "publishers": publishers,
        "qos": 1,
        "payload_bytes": args.payload,
        "target_msg_per_s": args.msg_rate,
        "sent": sent,
        "acked": acked,
        "window_s": round(window, 2),
        "acked_per_s": round(acked / args.publish_seconds, 1),
        "send_stalls": sum(a.get("send_stalls", 0) for a in answers),
        "idle_cpu_percent": {
            "process": round(idle_rate * 100, 2),
            "gateway_thread": (
                round(idle_gateway_rate * 100, 2) if idle_gateway_rate is not None else None
            ),
        },
        "cpu_s": {
            "process": round(process_cpu, 2),
            "gateway_thread": round(gateway_cpu, 2) if gateway_cpu is not None else None,
        },
        "percent_of_a_core_per_1000_msg_s": {
            "process": per_1000(process_cpu, idle_rate),
            "gateway_thread": per_1000(gateway_cpu, idle_gateway_rate),
        },
        "live_during": door.status()["connections"]["live"],
    }
    errors = [a.get("error") or a.get("first_error") for a in answers]
    if any(errors):
        result["first_error"] = next(e for e in errors if e)
    return result


def bench_door(regions: LocalRegions, state_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Identities, registration, connect steps, publish CPU: the door's numbers."""
    assert regions.pki is not None
    door = regions.gateway(REGION)
    endpoints = regions.endpoints()
    region = endpoints["regions"][REGION]
    steps = sorted(set(args.devices))
    directory = state_dir / "door-devices"
    keygen = generate_device_identities(
        directory, [_device(i) for i in range(steps[-1])], pki=regions.pki, workers=2
    )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else 200
    # Each live device costs the gateway two files: its TLS socket and the broker's.
    max_live = max(1, min(args.max_live, (soft - open_now - 500) // 2))
    result: dict[str, Any] = {
        "region": REGION,
        "how": {
            "identities": "generate_device_identities: EC P-256 key and certificate per "
            "device, signed by the fleet CA, 2 worker processes",
            "registration": "boto3 iot per device: RegisterCertificateWithoutCA ACTIVE, "
            "CreateThing, AttachThingPrincipal, AttachPolicy of the region's default device "
            "policy (quotas of those APIs raised to 10,000 TPS); the door learns them from "
            "the control plane's feed",
            "admission": "the door as `iotdr sim regions up` runs it: every device its own "
            "certificate, client ID = its thing name, authorized by its IoT policies "
            "(connect as the attached thing; publish, receive, subscribe anywhere), AWS's "
            "CONNECT quotas",
            "load": f"{args.load_workers} load processes, {args.connect_threads} threads "
            "each, blocking TLS sockets (TLS 1.3, SNI = the region's endpoint), MQTT 3.1.1 "
            "CONNECT; a refused attempt retries after 0.25-2 s, 5 attempts at most",
            "cpu": "time.process_time() of this process (the gateway's loop thread and "
            "everything else LocalRegions runs in it; brokers and control plane are other "
            "processes) and the gateway thread's own CPU clock",
            "door_counters": "the door's own admitted/refused counts, which include the "
            "health checker's probes (one per region every 10 s)",
        },
        "quota": {
            "account_connects_per_s": door.gateway.config.limits.account_per_s,
            "client_id_connects_per_s": door.gateway.config.limits.client_id_per_s,
        },
        "files": {"per_process_limit": soft, "held_at_most": max_live},
        "identities": {
            "count": keygen.count,
            "elapsed_s": round(keygen.elapsed_s, 2),
            "per_s": round(keygen.count / keygen.elapsed_s, 1) if keygen.elapsed_s else None,
        },
        "steps": [],
    }
    base = door.status()["registry"]["certificates"]
    settings = [
        LoadSettings(
            index=i,
            host=region["host"],
            port=door.port,
            endpoint=region["endpoint"],
            source=f"127.0.0.{10 + i}",
            ca_pem=regions.pki.ca_path.read_text(),
            devices_dir=str(directory),
            connect_timeout_s=10.0,
            attempts=5,
        )
        for i in range(args.load_workers)
    ]
    load = LoadGenerators(settings)
    try:
        registered = 0
        for count in steps:
            step: dict[str, Any] = {"devices": count}
            step["registration"] = register_devices(
                endpoints["control_plane_url"],
                directory,
                [_device(i) for i in range(registered, count)],
                args.register_threads,
                args.door_timeout,
            )
            registered = count
            step["registry_synced"] = _wait_for_registry(door, base + count, 120)
            step |= bench_connects(regions, load, count, max_live, args)
            step["closed"] = _close_all(regions, load)
            result["steps"].append(step)
        result["publish"] = bench_publish(regions, load, min(args.publishers, steps[-1]), args)
        _close_all(regions, load)
    finally:
        load.stop()
    result["door_status"] = {
        key: value
        for key, value in door.status().items()
        if key in ("admitted", "refused", "cut", "connections")
    }
    return result


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
        if args.devices:
            result["door"] = bench_door(regions, state_dir, args)
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
    parser.add_argument(
        "--devices",
        type=_positive,
        nargs="*",
        default=[1_000],
        help="door steps: devices registered and connected (e.g. 1000 10000; none to skip)",
    )
    parser.add_argument("--load-workers", type=_positive, default=2, help="load processes")
    parser.add_argument("--connect-threads", type=_positive, default=8, help="per load process")
    parser.add_argument("--register-threads", type=_positive, default=4)
    parser.add_argument(
        "--max-live", type=_positive, default=9_000, help="devices held open through the door"
    )
    parser.add_argument("--publishers", type=_positive, default=100)
    parser.add_argument("--msg-rate", type=_positive, default=1_000, help="QoS 1 msg/s in all")
    parser.add_argument("--payload", type=_positive, default=100, help="bytes per message")
    parser.add_argument("--publish-seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--door-timeout", type=float, default=600.0, help="seconds per door step")
    parser.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-regions-") as scratch:
        result = run(args, Path(scratch))
    result["settings"] = {
        "quotas": QUOTAS,
        "phase_timeout_s": args.phase_timeout,
        "door_timeout_s": args.door_timeout,
        "devices": args.devices,
        "load_workers": args.load_workers,
        "connect_threads": args.connect_threads,
        "msg_rate": args.msg_rate,
        "publishers": args.publishers,
        "seed": args.seed,
    }
    result["python"] = platform.python_version()
    result["cores"] = os.cpu_count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
