"""A drill against real AWS IoT (``iotdr sim run --target aws``): its configuration, checked.

Pure: nothing here talks to AWS. :class:`AwsTarget` says where the fleet
goes (the devices' CNAME, each region's ATS endpoint, the CA, the
resolver), whose identities it uses (:func:`load_identities`: a directory
with a ``results.json``) and, optionally, the Route 53 record a ``dns``
step flips (:func:`route53_change` builds the request). :func:`check_aws_plan`
refuses, before anything starts, a scenario that cannot run against AWS:
the regions cannot be faulted from outside, so faults are on the devices'
side only.

``results.json`` (the format ``iotdr tools bulk-provision`` writes; paths
relative to its directory)::

    {
      "format": "iotdr-bulk-provision/1",
      "regions": ["us-east-1", "us-west-2"],
      "devices": [
        {"thing_name": "sim-00001", "certificate_id": "9f86...", "cert": "certs/sim-00001.crt",
         "key": "certs/sim-00001.key"},
        ...
      ],
      "observer": {"client_id": "iotdr-fleet-observer", "cert": "observer.crt",
                   "key": "observer.key"}
    }

The devices may also be listed as ``iotdr tools bulk-provision`` writes
them: ``{"thingName": ..., "certificateId": ..., "certificatePem": "-----BEGIN
CERTIFICATE-----...", "privateKey": "NAME.private.key"}`` (the certificate is
then written next to the key as ``NAME.certificate.pem``); its run is in one
region (``region``), the replicator's to copy to the other.

``regions``: where every certificate is ACTIVE and attached to its thing;
``devices[].thing_name`` is also the device's MQTT client ID;
``certificate_id`` is optional (informative); ``observer`` is the cloud-side
counter's identity, whose policy allows ``iot:Connect`` on client IDs
``<client_id>-*`` and subscribing to ``iotdr/sim/+/telemetry``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._scenario import (
    CreateDevicesStep,
    DnsStep,
    FaultStep,
    HealStep,
    ReplicatorStep,
    ScenarioError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from simulators.fleet._scenario import Scenario

__all__ = [
    "RESULTS_FILE",
    "RESULTS_FORMAT",
    "AwsIdentities",
    "AwsTarget",
    "Identity",
    "Route53Flip",
    "check_aws_plan",
    "load_identities",
    "load_target_file",
    "route53_change",
    "system_resolver",
]

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "iotdr-bulk-provision/1"
_ZONE_ID = re.compile(r"^(/hostedzone/)?[A-Z0-9]{1,32}$")
_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{1,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route53Flip:
    """The Route 53 record that a ``dns: {cname: REGION}`` step points at a region.

    Attributes:
        hosted_zone_id: the hosted zone (``Z0123...``, with or without ``/hostedzone/``).
        record_name: the CNAME's name (the devices' name).
        ttl: the record's TTL in seconds.
    """

    hosted_zone_id: str
    record_name: str
    ttl: int = 30

    def __post_init__(self) -> None:
        if not _ZONE_ID.match(self.hosted_zone_id):
            msg = f"route53 hosted zone id {self.hosted_zone_id!r} is not a zone id like Z0123ABC"
            raise SimulatorError(msg)
        if not _HOST.match(self.record_name.rstrip(".")):
            msg = f"route53 record name {self.record_name!r} is not a DNS name"
            raise SimulatorError(msg)
        if not 0 <= self.ttl <= 2**31 - 1:
            msg = f"route53 ttl {self.ttl} is out of range (0 to 2147483647 s)"
            raise SimulatorError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsTarget:
    """Where a drill against AWS IoT sends the fleet.

    Attributes:
        device_name: the name the devices resolve (a CNAME to a region's endpoint).
        endpoints: per region, its ATS endpoint (``<prefix>-ats.iot.<region>.amazonaws.com``).
        identities: the directory with ``results.json``.
        ca: the CA the endpoints' certificates chain to (Amazon Root CA 1, PEM).
        port: the endpoints' MQTT over TLS port.
        dns: the resolver the devices ask, ``(host, port)``.
        route53: the record ``dns`` steps flip; None refuses ``dns`` steps.
    """

    device_name: str
    endpoints: Mapping[str, str]
    identities: Path
    ca: Path
    port: int = 8883
    dns: tuple[str, int] = ("127.0.0.53", 53)
    route53: Route53Flip | None = None

    def __post_init__(self) -> None:
        if not _HOST.match(self.device_name.rstrip(".")):
            msg = f"device name {self.device_name!r} is not a DNS name (the devices' CNAME)"
            raise SimulatorError(msg)
        if len(self.endpoints) < 2:
            msg = "give the endpoints of at least two regions (REGION=HOST), the primary first"
            raise SimulatorError(msg)
        for region, host in self.endpoints.items():
            if not _HOST.match(host) or f".{region}." not in f".{host}.":
                msg = (
                    f"endpoint {host!r} of {region} is not {region}'s ATS endpoint "
                    f"(<prefix>-ats.iot.{region}.amazonaws.com; `aws iot describe-endpoint "
                    f"--endpoint-type iot:Data-ATS --region {region}`)"
                )
                raise SimulatorError(msg)
        if not 1 <= self.port <= 65535:
            msg = f"port {self.port} is out of range"
            raise SimulatorError(msg)

    def as_settings(self) -> dict[str, object]:
        """What the report records of the target (JSON-ready; no key material)."""
        return {
            "target": "aws",
            "device_name": self.device_name,
            "endpoints": dict(self.endpoints),
            "route53": (
                None
                if self.route53 is None
                else {
                    "hosted_zone_id": self.route53.hosted_zone_id,
                    "record": self.route53.record_name,
                }
            ),
        }


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate and key: a device's (its thing name is its client ID) or the observer's."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class AwsIdentities:
    """``results.json``, read: the devices in order, the observer, the regions they are in."""

    devices: tuple[Identity, ...]
    observer: Identity | None
    regions: tuple[str, ...] = field(default=())


def _from_bulk(item: dict[str, Any], where: str, base: Path) -> dict[str, Any]:
    """A device as ``iotdr tools bulk-provision`` lists it, in this module's keys.

    Its entry names the thing (``thingName``), holds the certificate inline
    (``certificatePem``) and names its private key file (``privateKey``); the
    certificate is written next to the key as ``NAME.certificate.pem``, the
    file ``iotdr tools extract-certs`` writes, unless it is there already.
    """
    name, pem, key = item.get("thingName"), item.get("certificatePem"), item.get("privateKey")
    if not isinstance(name, str) or not name or "/" in name or not isinstance(key, str):
        msg = f"{where}: thingName and privateKey missing (or not a string)"
        raise SimulatorError(msg)
    cert = f"{name}.certificate.pem"
    if not (base / cert).is_file():
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            msg = f"{where}: no certificatePem and no {base / cert}"
            raise SimulatorError(msg)
        try:
            (base / cert).write_text(pem)
        except OSError as exc:
            msg = f"{where}: cannot write {base / cert}: {exc.strerror}"
            raise SimulatorError(msg) from exc
    return {"thing_name": name, "cert": cert, "key": key}


def _identity(item: object, where: str, base: Path, name_key: str) -> Identity:
    if isinstance(item, dict) and name_key == "thing_name" and "thingName" in item:
        item = _from_bulk(item, where, base)
    if not isinstance(item, dict):
        msg = f"{where}: expected an object with {name_key}, cert and key"
        raise SimulatorError(msg)
    missing = [k for k in (name_key, "cert", "key") if not isinstance(item.get(k), str)]
    if missing:
        msg = f"{where}: {', '.join(missing)} missing (or not a string)"
        raise SimulatorError(msg)
    identity = Identity(str(item[name_key]), base / item["cert"], base / item["key"])
    for path in (identity.cert, identity.key):
        if not path.is_file():
            msg = f"{where}: {path} not found"
            raise SimulatorError(msg)
    return identity


def load_identities(directory: Path) -> AwsIdentities:
    """The identities in ``directory/results.json`` (see the module's schema), every file checked.

    Raises:
        SimulatorError: one line: the file missing or not JSON, another format,
            a device without its files, a name given twice.
    """
    path = directory / RESULTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"{path} not found: give the directory `iotdr tools bulk-provision` wrote"
        raise SimulatorError(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"{path} cannot be read: {exc}"
        raise SimulatorError(msg) from exc
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        msg = f"{path}: format {found!r}, expected {RESULTS_FORMAT!r}"
        raise SimulatorError(msg)
    items = data.get("devices")
    if not isinstance(items, list) or not items:
        msg = f"{path}: devices: expected a non-empty list"
        raise SimulatorError(msg)
    devices = tuple(
        _identity(item, f"{path}: devices[{i}]", directory, "thing_name")
        for i, item in enumerate(items)
    )
    seen: set[str] = set()
    for i, device in enumerate(devices):
        if device.name in seen:
            msg = f"{path}: devices[{i}]: thing name {device.name!r} given twice"
            raise SimulatorError(msg)
        seen.add(device.name)
    observer = data.get("observer")
    return AwsIdentities(
        devices,
        None
        if observer is None
        else _identity(observer, f"{path}: observer", directory, "client_id"),
        tuple(str(r) for r in data.get("regions") or [data.get("region")] if r),
    )


def system_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, int]:
    """The first ``nameserver`` of ``resolv.conf`` (what the devices ask by default)."""
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1], 53
    except OSError:
        pass
    msg = f'no nameserver in {resolv_conf}: give the devices\' resolver (dns = "HOST:PORT")'
    raise SimulatorError(msg)


def load_target_file(path: Path | None, **overrides: Any) -> AwsTarget:
    """An :class:`AwsTarget` from a TOML file, ``overrides`` (options given) over its values.

    Keys: ``device_name``, ``identities``, ``ca``, ``port``, ``dns`` (``HOST:PORT``),
    ``[endpoints]`` (``REGION = "HOST"``, the primary first) and ``[route53]``
    (``hosted_zone_id``, ``record_name`` (default: ``device_name``), ``ttl``).
    Relative paths are relative to the file. ``path`` None: the options only.

    Raises:
        SimulatorError: the file cannot be read, an unknown key, a value missing or wrong.
    """
    data: dict[str, Any] = {}
    base = Path()
    if path is not None:
        base = path.parent
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            msg = f"target file {path} cannot be read: {exc}"
            raise SimulatorError(msg) from exc
    known = {"device_name", "identities", "ca", "port", "dns", "endpoints", "route53"}
    unknown = sorted(set(data) - known)
    if unknown:
        msg = (
            f"target file {path}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
        raise SimulatorError(msg)
    data.update({k: v for k, v in overrides.items() if v not in (None, {}, ())})
    missing = [k for k in ("device_name", "identities", "ca", "endpoints") if k not in data]
    if missing:
        msg = f"--target aws needs {', '.join(missing)} (in --target-file or as options)"
        raise SimulatorError(msg)
    route53 = data.get("route53")
    flip = None
    if route53 is not None:
        if not isinstance(route53, dict) or "hosted_zone_id" not in route53:
            msg = "route53 needs hosted_zone_id (and optionally record_name, ttl)"
            raise SimulatorError(msg)
        flip = Route53Flip(
            hosted_zone_id=str(route53["hosted_zone_id"]),
            record_name=str(route53.get("record_name", data["device_name"])),
            ttl=int(route53.get("ttl", 30)),
        )
    dns = data.get("dns")
    return AwsTarget(
        device_name=str(data["device_name"]),
        endpoints={str(k): str(v) for k, v in dict(data["endpoints"]).items()},
        identities=base / str(data["identities"]),
        ca=base / str(data["ca"]),
        port=int(data.get("port", 8883)),
        dns=_resolver(dns) if dns else system_resolver(),
        route53=flip,
    )


def _resolver(text: object) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        msg = f"dns {text!r} is not HOST:PORT, e.g. 10.0.0.2:53"
        raise SimulatorError(msg)
    return host, int(port)


def check_aws_plan(scenario: Scenario, target: AwsTarget) -> list[str]:
    """Refuse a scenario that cannot run against AWS; the notes the report should carry.

    Raises:
        ScenarioError: one line naming the step: a fault of a region's door or
            control plane (AWS cannot be faulted from outside: use
            ``side: devices``), a heal of the door side, a replicator step, a
            ``create_devices`` step, a ``dns`` step without a Route 53 record,
            or a region without an endpoint.
    """
    missing = [r for r in scenario.regions if r not in target.endpoints]
    if missing:
        msg = f"no AWS endpoint for {', '.join(missing)}: give --endpoint REGION=HOST"
        raise ScenarioError(msg, source=scenario.name, path="regions")
    for i, step in enumerate(scenario.timeline):
        problem = _aws_problem(step, target)
        if problem is not None:
            raise ScenarioError(
                f"{problem} (--target aws)", source=scenario.name, path=f"timeline[{i}]"
            )
    notes = [
        "target aws: AWS's own quotas apply (CONNECT 500/s per account, 1/s per client ID)",
        (
            "target aws: AWS's doors cannot be read: connects, refusals at the doors, handshakes "
            "and the failback storm's peak are not measured"
        ),
    ]
    if scenario.quotas:
        notes.append("target aws: the scenario's quotas were not applied (they are AWS's to set)")
    if scenario.replication != "off":
        notes.append(
            "target aws: the simulator runs no replicator; the regions are as your own "
            "replicator keeps them"
        )
    return notes


def _aws_problem(step: object, target: AwsTarget) -> str | None:
    if isinstance(step, FaultStep):
        return (
            f"a fault of {step.region}'s door or control plane ({step.mode}) cannot be injected "
            "into AWS IoT; fault the devices' side: fault: {side: devices, region, mode}"
        )
    if isinstance(step, HealStep) and getattr(step, "side", None) == "door":
        return "heal side: door has no door to heal on AWS; use side: devices"
    if isinstance(step, ReplicatorStep):
        return (
            "replicator steps are for the local regions' replicator; the simulator runs none on AWS"
        )
    if isinstance(step, CreateDevicesStep):
        return (
            "create_devices cannot register devices in AWS; provision them with "
            "bulk-provision first"
        )
    if isinstance(step, DnsStep) and target.route53 is None:
        return "a dns step needs the Route 53 record to flip: [route53] hosted_zone_id"
    return None


def route53_change(flip: Route53Flip, endpoint: str, *, comment: str) -> dict[str, Any]:
    """The ``ChangeResourceRecordSets`` request that points ``flip``'s CNAME at ``endpoint``."""
    return {
        "HostedZoneId": flip.hosted_zone_id.removeprefix("/hostedzone/"),
        "ChangeBatch": {
            "Comment": comment,
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": flip.record_name.rstrip(".") + ".",
                        "Type": "CNAME",
                        "TTL": flip.ttl,
                        "ResourceRecords": [{"Value": endpoint}],
                    },
                }
            ],
        },
    }
