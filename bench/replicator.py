"""Benchmark: a complete-mode backlog, lag at a steady event rate, and failback.

Starts the local control plane (throttling at AWS's default TPS, as AWS does)
with a broker per region for its registry events. Then:

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

Then failback, each part on fresh local regions (with shadow services), so that
the full passes compare only what the part made:

3. failback backlog: ``--failback-changes`` things synced forward on the
   service's journal, then, as during an outage, ``--failback-devices``
   complete-mode devices registered in the secondary (certificate, policy,
   thing, attachment, reported shadow) and the synced things changed there,
   while the primary deletes a tenth as many synced things and creates as
   many of its own (untimed). Timed: the failback reconcile (secondary to primary) on
   that journal. Devices/s is compared with the slowest quota a device needs
   (10 TPS), and every call is counted by region and API to show which bucket
   bound it. The primary is then checked: every device and change there,
   nothing resurrected, nothing of its own deleted.
4. automatic failback: the service with ``--failback auto``'s engine (both ways) and
   feeds; ``--auto-trials`` times the primary's control plane goes down
   (HTTP 503), ``--auto-devices`` devices register in the secondary, the
   primary comes back; timed from its return until every device (thing and
   shadow) is in the primary, with the full pass's report line.

Prints one JSON object; never asserts a time. Run by hand:

    python bench/replicator.py                      # about 12 minutes
    python bench/replicator.py --only failback      # 3 and 4: about 4.5 minutes
    python bench/replicator.py --devices 300 --steady-devices 60 --failback-devices 100

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
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicator.aws._adapter import RegionConfig, build_region
from replicator.core._records import ObjectNamed
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._failback import AutoFailback
from replicator.runtime._feed import FeedConfig
from replicator.runtime._host import run_service
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import DEFAULT_TPS, DEFAULT_UNLISTED_TPS, QuotaLimiter
from replicator.runtime._reconcile import reconcile
from simulators import BrokerSpec, start_broker
from simulators.controlplane import start_control_plane
from simulators.shadows import ShadowService

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from mypy_boto3_iot import IoTClient
    from mypy_boto3_iot.type_defs import AttributePayloadTypeDef
    from mypy_boto3_iot_data import IoTDataPlaneClient

    from replicator.core._sync import Direction
    from simulators.controlplane import ControlPlane

EAST, WEST = "us-east-1", "us-west-2"
# The calls one complete-mode device costs, per region, at 10 TPS or so: the slowest bound it.
PER_DEVICE_APIS = (
    "RegisterCertificateWithoutCA",
    "DescribeCertificate",
    "ListThingPrincipals",
    "ListThingGroupsForThing",
)
# Failing a device back reads it in both regions and writes it in the primary: the same
# 10-TPS calls, and the policy's attachment (15 TPS) and the thing's creation.
FAILBACK_PER_DEVICE_APIS = (*PER_DEVICE_APIS, "ListAttachedPolicies", "AttachPolicy")
# A full pass reads every object of a kind in both regions (in parallel), one kind after the
# other; each object costs one call of its kind's slowest read.
SLOWEST_READ_OF_KIND = {
    "thingType": "DescribeThingType",
    "thingGroup": "ListThingsInThingGroup",
    "policy": "GetPolicy",
    "certificate": "DescribeCertificate",
    "thing": "ListThingPrincipals",
    "shadow": "GetThingShadow",
}
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
WAIT_S = 120.0  # the longest wait for one step of automatic failback


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


def _quota(api: str) -> float:
    """AWS's default TPS of ``api``."""
    return DEFAULT_TPS.get(api, DEFAULT_UNLISTED_TPS)


def _user_client(url: str, region: str = EAST) -> IoTClient:
    # The "user" provisioning a region retries throttled calls as the SDKs do.
    config = Config(retries={"mode": "adaptive", "max_attempts": 50}, max_pool_connections=32)
    return boto3.client("iot", region_name=region, endpoint_url=url, config=config)


@dataclass(frozen=True, slots=True)
class _Regions:
    """The two local regions: one control plane, a broker each, shadow services if started."""

    plane: ControlPlane
    brokers: dict[str, tuple[str, int]]
    data_urls: dict[str, str]
    broker_kind: str

    def config(self, region: str) -> RegionConfig:
        data = self.data_urls.get(region, self.plane.url)
        return RegionConfig(region=region, endpoint_url=self.plane.url, data_endpoint_url=data)

    def iot(self, region: str) -> IoTClient:
        return _user_client(self.plane.url, region)

    def data(self, region: str) -> IoTDataPlaneClient:
        config = Config(max_pool_connections=32)
        return boto3.client(
            "iot-data", region_name=region, endpoint_url=self.data_urls[region], config=config
        )


@contextlib.contextmanager
def _local_regions(state: Path, *, shadows: bool) -> Iterator[_Regions]:
    """Brokers, the control plane (at AWS's TPS) and, with ``shadows``, shadow services."""
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        brokers = {}
        for region, host in ((EAST, "127.0.0.2"), (WEST, "127.0.0.3")):
            spec = BrokerSpec(region=region, state_dir=state, host=host, port=0, tls_port=None)
            brokers[region] = start_broker(spec)
            stack.callback(brokers[region].stop)
        addresses = {region: (b.host, b.port) for region, b in brokers.items()}
        plane = stack.enter_context(start_control_plane(state_dir=state, brokers=addresses))
        data_urls = {}
        if shadows:
            for region, (host, port) in addresses.items():
                service = ShadowService(region, http_host=host, broker=(host, port))
                service.start()
                stack.callback(service.stop)
                data_urls[region] = service.url
        yield _Regions(plane, addresses, data_urls, brokers[EAST].kind)


class _CountingLimiter(QuotaLimiter):
    """AWS's quotas, and every call counted by region and API: what bounded a run."""

    def __init__(self) -> None:
        super().__init__()
        self._counted = threading.Lock()
        self._calls: dict[tuple[str, str], list[float]] = {}  # [calls, first, last]

    def acquire(self, region: str, api: str) -> float:
        waited = super().acquire(region, api)
        now = time.monotonic()
        with self._counted:
            entry = self._calls.setdefault((region, api), [0, now, now])
            entry[0] += 1
            entry[2] = now
        return waited

    def busiest(self, top: int = 8) -> dict[str, dict[str, float | None]]:
        """The buckets that needed the longest at their quota: calls, span, rate achieved."""
        found: dict[str, dict[str, float | None]] = {}
        with self._counted:
            entries = dict(self._calls)
        for (region, api), (calls, first, last) in entries.items():
            quota = _quota(api)
            span = last - first
            found[f"{region}/{api}"] = {
                "calls": int(calls),
                "quota_tps": quota,
                "at_quota_s": round(calls / quota, 1),
                "span_s": round(span, 1),
                "per_s": round((calls - 1) / span, 2) if span > 0 else None,
            }
        ranked = sorted(found.items(), key=lambda item: -float(item[1]["at_quota_s"] or 0))
        return dict(ranked[:top])


def _provision(client: IoTClient, name: str, *, mark: bool) -> str:
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
    return cert["certificateId"]


def _register_device(client: IoTClient, data: IoTDataPlaneClient, name: str) -> str:
    """A device registered in the secondary (as JITR would) that then reports its state."""
    certificate_id = _provision(client, name, mark=False)
    payload = json.dumps({"state": {"reported": {"device": name, "fw": "1.2"}}})
    data.update_thing_shadow(thingName=name, payload=payload.encode())
    return certificate_id


def _engine(
    regions: _Regions,
    journal: Journal,
    workers: int,
    recheck: float | None,
    limiter: QuotaLimiter,
    *,
    direction: Direction = "forward",
    both_ways: bool = False,
) -> Engine:
    """An engine as ``runtime._build.build`` makes it, on a journal and buckets of the bench's."""
    built = {r: build_region(regions.config(r), limiter=limiter) for r in (EAST, WEST)}
    source, target = (EAST, WEST) if direction == "forward" else (WEST, EAST)
    config = EngineConfig(
        workers=workers,
        thing_recheck_s=recheck,
        direction=direction,
        both_ways=both_ways,
    )
    return Engine(source=built[source], target=built[target], journal=journal, config=config)


def _wait_drained(journal: Journal, timeout_s: float, runner: threading.Thread) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and runner.is_alive():
        if journal.counts(time.time()).pending == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def _wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``check`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return False


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


def _backlog(regions: _Regions, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    east = regions.iot(EAST)
    names = [f"dev-{n:05d}" for n in range(args.devices)]
    seeded = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: _provision(east, name, mark=False), names))
    seed_s = time.monotonic() - seeded
    with Journal(state / "backlog.db", synchronous="NORMAL") as journal:
        limiter = QuotaLimiter()
        engine = _engine(regions, journal, args.workers, None, limiter)
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
    wrong = _check(regions.iot(WEST), sample)
    quota = min(_quota(api) for api in PER_DEVICE_APIS)
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


def _steady(regions: _Regions, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    east = regions.iot(EAST)
    with Journal(state / "steady.db") as journal:
        engine = _engine(regions, journal, args.workers, None, QuotaLimiter())
        host, port = regions.brokers[EAST]
        feed = FeedConfig(region=EAST, host=host, port=port, client_id="bench-steady")
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


def _things_of(client: IoTClient) -> dict[str, dict[str, str]]:
    """Every thing of a region with its attributes (ListThings, paginated)."""
    found: dict[str, dict[str, str]] = {}
    for page in client.get_paginator("list_things").paginate():
        for thing in page["things"]:
            found[thing["thingName"]] = dict(thing.get("attributes") or {})
    return found


def _certificates_of(client: IoTClient) -> dict[str, str]:
    """Every certificate of a region with its status (ListCertificates, paginated)."""
    found: dict[str, str] = {}
    for page in client.get_paginator("list_certificates").paginate():
        for cert in page["certificates"]:
            found[cert["certificateId"]] = cert["status"]
    return found


def _reported(data: IoTDataPlaneClient, thing: str) -> object:
    """The shadow's reported state, None when there is no shadow."""
    try:
        payload = data.get_thing_shadow(thingName=thing)["payload"].read()
    except data.exceptions.ResourceNotFoundException:
        return None
    return json.loads(payload).get("state", {}).get("reported")


def _failback_seed(
    regions: _Regions, forward: Engine, args: argparse.Namespace
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Before the outage, a forward sync; during it, devices and changes in both regions.

    Returns each device's certificate in the secondary, and the names of the
    things ``changed`` in the secondary, ``deleted`` and ``created`` in the primary.
    """
    east, west, west_data = regions.iot(EAST), regions.iot(WEST), regions.data(WEST)
    extra = max(1, args.failback_changes // 10)
    things = {
        "changed": [f"synced-{n:05d}" for n in range(args.failback_changes)],
        "deleted": [f"gone-{n:05d}" for n in range(extra)],
        "created": [f"primary-{n:05d}" for n in range(extra)],
    }
    devices = [f"back-{n:05d}" for n in range(args.failback_devices)]
    east.create_policy(policyName="fleet", policyDocument=POLICY)
    attributes: AttributePayloadTypeDef = {"attributes": {"fleet": "bench", "site": "primary"}}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        synced = things["changed"] + things["deleted"]
        list(
            pool.map(lambda n: east.create_thing(thingName=n, attributePayload=attributes), synced)
        )
        keys = [ObjectKey.policy("fleet"), *(ObjectKey.thing(n) for n in synced)]
        forward.journal.accept_many(
            (ObjectNamed(region=EAST, key=k) for k in keys), now=time.time()
        )
        forward.drain()  # the service's forward run: the sync points
        # The outage: devices register in the secondary, operators edit things there, while
        # the primary (its control plane still answering some) deletes and creates things.
        ids = pool.map(lambda n: _register_device(west, west_data, n), devices)
        certificates = dict(zip(devices, ids, strict=True))
        change: AttributePayloadTypeDef = {"attributes": {"site": "secondary"}, "merge": True}
        list(
            pool.map(
                lambda n: west.update_thing(thingName=n, attributePayload=change),
                things["changed"],
            )
        )
        list(pool.map(lambda n: east.delete_thing(thingName=n), things["deleted"]))
        list(
            pool.map(
                lambda n: east.create_thing(thingName=n, attributePayload=attributes),
                things["created"],
            )
        )
    return certificates, things


def _failback_check(
    regions: _Regions,
    certificates: dict[str, str],
    things: dict[str, list[str]],
    check: int,
) -> dict[str, int]:
    """What is wrong in the primary after failing back, by what."""
    east, east_data = regions.iot(EAST), regions.data(EAST)
    present = _things_of(east)
    statuses = _certificates_of(east)
    wrong = {
        "devices_missing": sum(
            name not in present or statuses.get(cert) != "ACTIVE"
            for name, cert in certificates.items()
        ),
        "shadows_wrong": sum(
            _reported(east_data, name) != {"device": name, "fw": "1.2"} for name in certificates
        ),
        "changes_missing": sum(
            present.get(name, {}).get("site") != "secondary" for name in things["changed"]
        ),
        "resurrected": sum(name in present for name in things["deleted"]),
        "primary_own_lost": sum(name not in present for name in things["created"]),
        "policy_lost": int(not east.list_policies()["policies"]),
    }
    attached = 0
    for name in random.Random(2).sample(sorted(certificates), min(check, len(certificates))):
        try:
            principals = east.list_thing_principals(thingName=name)["principals"]
            attached += [p.rsplit("/", 1)[1] for p in principals] != [certificates[name]]
        except Exception:  # noqa: BLE001 - a missing attachment is a failure, counted
            attached += 1
    wrong["attachments_wrong"] = attached
    return wrong


def _failback_backlog(regions: _Regions, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = state / "failback.db"
    with Journal(path) as journal:
        forward = _engine(regions, journal, args.workers, None, QuotaLimiter())
        seeded = time.monotonic()
        certificates, things = _failback_seed(regions, forward, args)
        seed_s = time.monotonic() - seeded
    with Journal(path, queue="failback") as journal:  # the service's journal: its sync points
        limiter = _CountingLimiter()
        back = _engine(regions, journal, args.workers, 30.0, limiter, direction="failback")
        started = time.monotonic()
        report = reconcile(back, dry_run=False, workers=args.workers)
        elapsed = time.monotonic() - started
        counts = journal.counts(time.time())
    wrong = _failback_check(regions, certificates, things, args.check)
    quota = min(_quota(api) for api in FAILBACK_PER_DEVICE_APIS)
    rate = args.failback_devices / elapsed if elapsed else 0.0
    at_quota = sum(n / _quota(SLOWEST_READ_OF_KIND[kind]) for kind, n in report.compared.items())
    return {
        "devices": args.failback_devices,
        "changed_in_secondary": len(things["changed"]),
        "deleted_in_primary": len(things["deleted"]),
        "created_in_primary": len(things["created"]),
        "seed_s": round(seed_s, 1),
        "reconcile_s": round(elapsed, 1),
        "devices_per_s": round(rate, 2),
        "slowest_quota_tps": quota,
        "ratio_to_quota": round(rate / quota, 3),
        "full_pass_at_quota_s": round(at_quota, 1),
        "ratio_to_full_pass_at_quota": round(at_quota / elapsed, 3) if elapsed else None,
        "compared": report.compared,
        "copied_back": report.differing,
        "conflicts": report.conflicts,
        "errors": report.errors,
        "failures": report.errors + report.conflicts + counts.dead + sum(wrong.values()),
        "wrong_in_primary": wrong,
        "attachments_checked": min(args.check, args.failback_devices),
        "writes": back.stats.as_dict()["writes"],
        "busiest_buckets": limiter.busiest(),
        "throttled_by_region": limiter.throttles(),
    }


def _present(east: IoTClient, east_data: IoTDataPlaneClient, name: str) -> bool:
    """Whether the device's thing and shadow are in the primary (DescribeThing: 350 TPS)."""
    try:
        east.describe_thing(thingName=name)
    except east.exceptions.ResourceNotFoundException:
        return False
    return _reported(east_data, name) is not None


def _auto_trial(
    regions: _Regions,
    auto: AutoFailback,
    lines: list[dict[str, Any]],
    trial: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One outage: down, devices register in the secondary, up; until they are all back."""
    east, east_data = regions.iot(EAST), regions.data(EAST)
    west, west_data = regions.iot(WEST), regions.data(WEST)
    names = [f"auto-{trial}-{n:04d}" for n in range(args.auto_devices)]
    passes = auto.passes
    regions.plane.set_outage(EAST, "http503")
    down_at = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        certificates = dict(
            zip(names, pool.map(lambda n: _register_device(west, west_data, n), names), strict=True)
        )
    seen_down = _wait_until(lambda: auto.watch.down, WAIT_S)
    time.sleep(max(0.0, down_at + args.outage - time.monotonic()))  # changes back off meanwhile
    regions.plane.set_outage(EAST, "up")
    back_at = time.monotonic()
    missing = set(names)

    def all_back() -> bool:
        missing.difference_update([n for n in sorted(missing) if _present(east, east_data, n)])
        return not missing

    _wait_until(all_back, WAIT_S, interval_s=0.25)
    back_s = time.monotonic() - back_at
    _wait_until(lambda: auto.passes > passes, WAIT_S)
    pass_s = time.monotonic() - back_at
    complete = [line for line in lines if line["event"] == "replicator.failback.complete"]
    started = [line for line in lines if line["event"] == "replicator.failback.started"]
    wrong = len(missing)
    for name in sorted(set(names) - missing):  # untimed: attached to the same certificate
        principals = east.list_thing_principals(thingName=name)["principals"]
        wrong += [p.rsplit("/", 1)[1] for p in principals] != [certificates[name]]
    return {
        "outage_s": round(back_at - down_at, 1),
        "outage_seen": seen_down,
        "all_back_s": round(back_s, 2),
        "full_pass_done_s": round(pass_s, 2) if auto.passes > passes else None,
        "wrong_in_primary": wrong,
        "started": started[-1] if len(started) > passes else None,
        "complete": complete[-1] if len(complete) > passes else None,
    }


def _auto_failback(regions: _Regions, state: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = state / "auto.db"
    lines: list[dict[str, Any]] = []
    limiter = QuotaLimiter()  # one per service, as ``iotdr replicator run`` has
    with Journal(path) as journal, Journal(path, queue="failback") as back_journal:
        forward = _engine(regions, journal, args.workers, 30.0, limiter, both_ways=True)
        back = forward.serving(back_journal)
        regions.iot(EAST).create_policy(policyName="fleet", policyDocument=POLICY)
        journal.accept(ObjectNamed(region=EAST, key=ObjectKey.policy("fleet")), now=time.time())
        forward.drain()  # the policy in the secondary, as replicated before the outage
        auto = AutoFailback(
            forward,
            back,
            report=lines.append,
            probe_interval_s=args.probe_interval,
            workers=args.workers,
        )
        feeds = {
            region: FeedConfig(region=region, host=host, port=port, client_id=f"bench-{region}")
            for region, (host, port) in regions.brokers.items()
        }
        stop = threading.Event()
        service = threading.Thread(
            target=run_service,
            args=(forward, feeds[EAST]),
            kwargs={"report": lines.append, "stop": stop, "failback": (auto, feeds[WEST])},
        )
        service.start()
        trials = []
        try:
            _wait_until(lambda: bool(lines), WAIT_S)
            time.sleep(1.0)  # the feeds' subscriptions
            for trial in range(args.auto_trials):
                trials.append(_auto_trial(regions, auto, lines, trial, args))
                _wait_until(lambda: back_journal.counts(time.time()).due == 0, WAIT_S)
        finally:
            regions.plane.set_outage(EAST, "up")
            stop.set()
            service.join(60)
        counts = [j.counts(time.time()) for j in (journal, back_journal)]
    back_s = sorted(t["all_back_s"] for t in trials)
    return {
        "devices_per_trial": args.auto_devices,
        "trials": len(trials),
        "probe_interval_s": args.probe_interval,
        "outage_at_least_s": args.outage,
        "all_back_p50_s": round(statistics.median(back_s), 2) if back_s else None,
        "all_back_max_s": back_s[-1] if back_s else None,
        "outages_seen": auto.watch.outages,
        "full_passes": auto.passes,
        "failures": sum(t["wrong_in_primary"] for t in trials)
        + sum(c.dead + c.dead_letters for c in counts),
        "service_stopped": not service.is_alive(),
        "by_trial": trials,
        "failback_engine": {
            k: v for k, v in back.stats.as_dict().items() if k in ("applied", "writes", "retried")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--steady-devices", type=int, default=100)
    parser.add_argument("--steady-rate", type=float, default=4.0)
    parser.add_argument("--failback-devices", type=int, default=500)
    parser.add_argument("--failback-changes", type=int, default=100)
    parser.add_argument("--auto-devices", type=int, default=20)
    parser.add_argument("--auto-trials", type=int, default=3)
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the primary is down")
    parser.add_argument("--only", choices=("forward", "failback"), help="one half of the bench")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--check", type=int, default=100, help="devices checked in the secondary")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if not 0 < args.devices <= 20_000 or not 0 < args.steady_rate <= 50:
        parser.error("devices 1..20000 and a steady rate up to 50/s keep the bench bounded")
    if not 0 < args.failback_devices <= 5_000 or not 0 <= args.failback_changes <= 5_000:
        parser.error("failback devices 1..5000 and changes 0..5000 keep the bench bounded")
    if not 0 < args.auto_devices <= 200 or not 0 < args.auto_trials <= 10:
        parser.error("auto devices 1..200 and trials 1..10 keep the bench bounded")
    if not 0.1 <= args.probe_interval <= 30 or not 0 <= args.outage <= 300:
        parser.error("the probe interval is 0.1..30 s, the outage 0..300 s")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ[name] = value
    result: dict[str, Any] = {
        "bench": "replicator",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="iotdr-bench-") as folder:
        state = Path(folder)
        if args.only != "failback":
            with _local_regions(state / "forward", shadows=False) as regions:
                result["broker"] = regions.broker_kind
                regions.iot(EAST).create_policy(policyName="fleet", policyDocument=POLICY)
                result["backlog"] = _backlog(regions, state, args)
                result["steady"] = _steady(regions, state, args)
                result["server_throttled_calls"] = regions.plane.status()["throttled"]
        if args.only != "forward":
            failback: dict[str, Any] = {}
            with _local_regions(state / "failback", shadows=True) as regions:
                result["broker"] = regions.broker_kind
                failback["backlog"] = _failback_backlog(regions, state, args)
                failback["server_throttled_calls"] = regions.plane.status()["throttled"]
            with _local_regions(state / "auto", shadows=True) as regions:
                failback["auto"] = _auto_failback(regions, state, args)
            result["failback"] = failback
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
