"""Benchmark: replication throughput of a complete-mode backlog, and lag at a steady event rate.

Starts the local control plane (throttling at AWS's default TPS, as AWS does)
with a broker for the primary's registry events. Then:

1. backlog: provisions ``--devices`` complete-mode devices in the primary
   (certificate, shared policy, thing, attachment; at the primary's own
   quotas, untimed), journals one trigger per thing, and times the engine until
   the journal is drained. Devices/s is compared with the slowest quota a
   device needs (10 TPS: RegisterCertificateWithoutCA, DescribeCertificate,
   ListThingPrincipals...). A sample of devices is then checked in the
   secondary; any mismatch, dead change or dead letter counts as a failure.
2. steady: the service (MQTT feed + engine) runs while devices are
   provisioned at ``--steady-rate`` per second; the lag is the time from a
   change's arrival in the journal to its application (p50/p99).

Prints one JSON object; never asserts a time. Run by hand:

    python bench/replicator.py                      # 2,000 devices: about 7 minutes
    python bench/replicator.py --devices 300 --steady-devices 60

Run as a script, this file would shadow the ``replicator`` package it
benchmarks: Python puts the script's own folder first on ``sys.path``. So it
takes that folder off ``sys.path`` before importing anything else (the bench
scripts import nothing from their folder). mypy names it ``bench.replicator``
(``bench/__init__.py``), so it does not clash with the package there either.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # else ``import replicator`` would import this script

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import random
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicator._aws import RegionConfig, build_region
from replicator._engine import Engine, EngineConfig
from replicator._feed import FeedConfig
from replicator._journal import Journal
from replicator._quotas import DEFAULT_TPS, DEFAULT_UNLISTED_TPS, QuotaLimiter
from replicator._records import ObjectNamed
from replicator._service import run_service
from replicator._state import ObjectKey
from simulators import BrokerSpec, start_broker
from simulators.controlplane import start_control_plane

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient

EAST, WEST = "us-east-1", "us-west-2"
# The calls one complete-mode device costs, per region, at 10 TPS or so: the slowest bound it.
PER_DEVICE_APIS = (
    "RegisterCertificateWithoutCA",
    "DescribeCertificate",
    "ListThingPrincipals",
    "ListThingGroupsForThing",
)
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"arn:aws:iot:{EAST}:123456789012:client/"
                "${iot:Connection.Thing.ThingName}",
            }
        ],
    }
)


def _certificate_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def _user_client(url: str) -> IoTClient:
    # The "user" provisioning the primary retries throttled calls as the SDKs do.
    config = Config(retries={"mode": "adaptive", "max_attempts": 50}, max_pool_connections=32)
    return boto3.client("iot", region_name=EAST, endpoint_url=url, config=config)


def _provision(client: IoTClient, name: str, *, mark: bool) -> None:
    cert = client.register_certificate_without_ca(
        certificatePem=_certificate_pem(name), status="ACTIVE"
    )
    client.attach_policy(policyName="fleet", target=cert["certificateArn"])
    client.create_thing(thingName=name, attributePayload={"attributes": {"fleet": "bench"}})
    client.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
    if mark:  # a provisioning flow that marks the device done: an event after the attachment
        client.update_thing(
            thingName=name, attributePayload={"attributes": {"provisioned": "1"}, "merge": True}
        )


def _engine(
    url: str, journal: Journal, workers: int, recheck: float | None, limiter: QuotaLimiter
) -> Engine:
    regions = [
        build_region(
            RegionConfig(region=r, endpoint_url=url, data_endpoint_url=url), limiter=limiter
        )
        for r in (EAST, WEST)
    ]
    config = EngineConfig(workers=workers, thing_recheck_s=recheck)
    return Engine(source=regions[0], target=regions[1], journal=journal, config=config)


def _wait_drained(journal: Journal, timeout_s: float, runner: threading.Thread) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and runner.is_alive():
        if journal.counts(time.time()).pending == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def _check(west: IoTClient, names: list[str]) -> int:
    """Devices of ``names`` missing or wrong in the secondary."""
    wrong = 0
    for name in names:
        try:
            principals = west.list_thing_principals(thingName=name)["principals"]
            cert_id = principals[0].rsplit("/", 1)[1]
            status = west.describe_certificate(certificateId=cert_id)["certificateDescription"]
            wrong += len(principals) != 1 or status["status"] != "ACTIVE"
        except Exception:  # noqa: BLE001 - a missing device is a failure, counted
            wrong += 1
    return wrong


def _backlog(url: str, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    east = _user_client(url)
    names = [f"dev-{n:05d}" for n in range(args.devices)]
    seeded = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: _provision(east, name, mark=False), names))
    seed_s = time.monotonic() - seeded
    with Journal(state / "backlog.db", synchronous="NORMAL") as journal:
        limiter = QuotaLimiter()
        engine = _engine(url, journal, args.workers, None, limiter)
        journal.accept_many(
            (ObjectNamed(region=EAST, key=ObjectKey.thing(n)) for n in names), now=time.time()
        )
        stop = threading.Event()
        runner = threading.Thread(target=engine.run, args=(stop,))
        runner.start()
        elapsed = _wait_drained(journal, args.timeout, runner)
        stop.set()
        runner.join()
        counts = journal.counts(time.time())
        limiter_throttles = limiter.throttles()
    sample = random.Random(1).sample(names, min(args.check, len(names)))
    wrong = _check(_user_client(url), sample)
    quota = min(DEFAULT_TPS.get(api, DEFAULT_UNLISTED_TPS) for api in PER_DEVICE_APIS)
    rate = args.devices / elapsed if elapsed else 0.0
    return {
        "devices": args.devices,
        "seed_s": round(seed_s, 1),
        "replicate_s": round(elapsed, 1),
        "devices_per_s": round(rate, 2),
        "slowest_quota_tps": quota,
        "ratio_to_quota": round(rate / quota, 3),
        "pending_left": counts.pending,
        "failures": counts.dead + counts.dead_letters + wrong,
        "checked": len(sample),
        "throttled_by_region": limiter_throttles,
        "writes": engine.stats.as_dict()["writes"],
    }


def _steady(
    url: str, broker: tuple[str, int], state: Path, args: argparse.Namespace
) -> dict[str, Any]:
    east = _user_client(url)
    with Journal(state / "steady.db") as journal:
        engine = _engine(url, journal, args.workers, None, QuotaLimiter())
        feed = FeedConfig(region=EAST, host=broker[0], port=broker[1], client_id="bench-steady")
        stop = threading.Event()
        service = threading.Thread(
            target=run_service, args=(engine, feed), kwargs={"report": lambda _: None, "stop": stop}
        )
        service.start()
        time.sleep(1.0)  # the feed's subscriptions
        interval = 1.0 / args.steady_rate
        started = time.monotonic()
        for n in range(args.steady_devices):
            _provision(east, f"steady-{n:05d}", mark=True)
            pause = started + (n + 1) * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        produced_s = time.monotonic() - started
        _wait_drained(journal, args.timeout, service)
        time.sleep(0.5)
        stop.set()
        service.join()
        stats = engine.stats.as_dict()
        counts = journal.counts(time.time())
    return {
        "devices": args.steady_devices,
        "rate_per_s": round(args.steady_devices / produced_s, 2),
        "lag_p50_s": stats["lag_p50_s"],
        "lag_p99_s": stats["lag_p99_s"],
        "applied": stats["applied"],
        "failures": counts.dead + counts.dead_letters,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--steady-devices", type=int, default=100)
    parser.add_argument("--steady-rate", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--check", type=int, default=100, help="devices checked in the secondary")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if not 0 < args.devices <= 20_000 or not 0 < args.steady_rate <= 50:
        parser.error("devices 1..20000 and a steady rate up to 50/s keep the bench bounded")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ[name] = value
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-") as folder:
        state = Path(folder)
        brokers = {
            region: start_broker(
                BrokerSpec(region=region, state_dir=state, host=host, port=0, tls_port=None)
            )
            for region, host in ((EAST, "127.0.0.2"), (WEST, "127.0.0.3"))
        }
        try:
            addresses = {region: (b.host, b.port) for region, b in brokers.items()}
            address = addresses[EAST]
            with start_control_plane(state_dir=state, brokers=addresses) as plane:
                east = _user_client(plane.url)
                east.create_policy(policyName="fleet", policyDocument=POLICY)
                backlog = _backlog(plane.url, state, args)
                steady = _steady(plane.url, address, state, args)
                server_throttled = plane.status()["throttled"]
        finally:
            for broker in brokers.values():
                broker.stop()
    result = {
        "bench": "replicator",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "broker": brokers[EAST].kind,
        "backlog": backlog,
        "steady": steady,
        "server_throttled_calls": server_throttled,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
