"""Local AWS IoT regions on one machine: brokers, shadow services, control plane, DNS.

:class:`LocalRegions` starts, for each region (default us-east-1 primary on
127.0.0.2, us-west-2 secondary on 127.0.0.3): its broker (a plain listener and
an mTLS listener whose server certificate covers the region's endpoint name
and IP), its shadow service (iot-data HTTP API plus the MQTT shadow topics);
then one control plane for all regions (moto with throttling, outages and
registry events published on each region's broker) and the Route 53 stand-in
serving the regions' records. :meth:`LocalRegions.endpoints` says where
everything is; :meth:`LocalRegions.stop` stops everything it started, in
reverse order.

A fleet starts from a steady state: :meth:`LocalRegions.register_fleet` writes
every device's registration into the regions in bulk (unthrottled, without
registry events) and waits until each region's door admits them; devices
created during a run go through the AWS APIs with :func:`register_device`.

While ``iotdr sim regions up`` runs, the endpoints are also written to
``<state_dir>/regions.json`` so that ``iotdr sim regions status`` and
``iotdr sim fault`` can find them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import boto3
import botocore.config
import botocore.exceptions
import dns.exception
import dns.message
import dns.query

from simulators._broker import BrokerSpec, TLSFiles, start_broker
from simulators._errors import SimulatorError
from simulators._healthcheck import HealthCheckConfig, HealthChecker
from simulators._loopthread import LoopThread
from simulators._pki import FleetPKI
from simulators._topology import DEFAULT_DOMAIN, DEFAULT_REGIONS
from simulators.controlplane import (
    THING_TYPE_DELETE_AFTER_S,
    BulkDevice,
    ControlPlaneError,
    device_policy,
    start_control_plane,
)
from simulators.dns import ThreadedDNSServer, default_zone
from simulators.gateway import (
    ConnectLimits,
    GatewayConfig,
    GatewayFault,
    GatewayProcesses,
    ThreadedRegionGateway,
)
from simulators.shadows import ShadowService

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from types import TracebackType

    from mypy_boto3_iot import IoTClient

    from simulators._broker import Broker
    from simulators._pki import CertifiedKey
    from simulators._topology import LocalRegion
    from simulators.controlplane import BulkPolicy, BulkResult, ControlPlane, OutageMode

__all__ = [
    "LocalRegions",
    "RegionPorts",
    "attach_device_policy",
    "read_regions_file",
    "register_device",
]

logger = logging.getLogger(__name__)

REGIONS_FILE = "regions.json"
HEALTH_CHECKER_ID = "iotdr-health-checker"


async def _start(checker: HealthChecker) -> None:
    checker.start()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionPorts:
    """Ports, the same on every region's own loopback IP; 0 picks free ones.

    Attributes:
        mqtt: the brokers' plain MQTT listeners (for tools and watchers).
        mqtts: the brokers' mTLS listeners (what devices use; AWS uses 8883).
        data: the shadow services' iot-data HTTP API.
        control_plane: the control plane, on 127.0.0.1.
        dns: the DNS server, on 127.0.0.1.
    """

    mqtt: int = 0
    mqtts: int = 0
    data: int = 0
    control_plane: int = 0
    dns: int = 0


class RegionDoor(Protocol):
    """A region's door, in a thread of this process or as processes of its own."""

    @property
    def region(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def admin_url(self) -> str | None: ...
    def set_fault(self, fault: GatewayFault | str) -> GatewayFault: ...
    def status(self) -> dict[str, Any]: ...
    def pending(self, wanted: Mapping[str, str]) -> int: ...
    def stop(self) -> None: ...


@dataclass(slots=True)
class _Region:
    spec: LocalRegion
    broker: Broker
    shadows: ShadowService
    tls: TLSFiles
    gateway: RegionDoor | None = None
    leaves: list[Broker] = field(default_factory=list)


@dataclass(slots=True)
class LocalRegions:
    """Two or more local regions and the services around them. Use ``with`` or start/stop.

    Args:
        state_dir: keys, configurations, logs (kept after stop).
        regions: the regions, the primary first.
        ports: where to listen.
        broker_kind: ``auto`` (mosquitto when installed), ``mosquitto`` or ``amqtt``.
        quotas: control-plane TPS overrides over AWS's defaults, in every region.
        region_quotas: per region, control-plane TPS overrides over ``quotas``
            (also settable while running: :meth:`set_control_plane_quotas`).
        door_limits: per region, the door's CONNECT quotas (AWS's defaults for a
            region not named), so that a scenario can lower the secondary's.
        health: the health checker's settings; None runs no checker (the CNAME
            then stays on the primary unless changed by hand).
        thing_type_delete_after_s: how long a thing type must have been deprecated
            before the control plane deletes it (AWS: 300 s; a few seconds in tests).
        door_processes: 0 runs each region's door in a thread of this process;
            N > 0 runs it as N processes sharing its port (a fleet of thousands;
            see :class:`~simulators.gateway.GatewayProcesses`).
        broker_shards: brokers per region: 1 is one broker; N > 1 adds N - 1 leaf
            brokers bridged to it (mosquitto only), over which the door spreads the
            devices by client ID, so that a region holds more devices than one
            process may have files (20,000 here).
    """

    state_dir: Path
    regions: tuple[LocalRegion, ...] = DEFAULT_REGIONS
    ports: RegionPorts = field(default_factory=RegionPorts)
    broker_kind: Literal["auto", "mosquitto", "amqtt"] = "auto"
    quotas: Mapping[str, float] | None = None
    region_quotas: Mapping[str, Mapping[str, float]] | None = None
    door_limits: Mapping[str, ConnectLimits] | None = None
    health: HealthCheckConfig | None = field(default_factory=HealthCheckConfig)
    thing_type_delete_after_s: float = THING_TYPE_DELETE_AFTER_S
    door_processes: int = 0
    broker_shards: int = 1
    pki: FleetPKI | None = None
    dns: ThreadedDNSServer | None = None
    control_plane: ControlPlane | None = None
    health_checker: HealthChecker | None = None
    _regions: dict[str, _Region] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __repr__(self) -> str:
        names = ", ".join(r.name for r in self.regions)
        state = "running" if self._regions else "stopped"
        return f"LocalRegions([{names}], {state}, state_dir={str(self.state_dir)!r})"

    def start(self) -> None:
        """Start everything; on any failure stop what started and raise one clear error."""
        if len(self.regions) < 2:
            msg = "local regions need at least a primary and a secondary"
            raise SimulatorError(msg)
        if self.broker_shards < 1 or self.door_processes < 0:
            msg = "local regions: broker_shards must be at least 1 and door_processes at least 0"
            raise SimulatorError(msg)
        names = {r.name for r in self.regions}
        for what, mapping in (
            ("region_quotas", self.region_quotas),
            ("door_limits", self.door_limits),
        ):
            unknown = sorted(set(mapping or {}) - names)
            if unknown:
                msg = f"{what} name {', '.join(unknown)}: not one of the regions {sorted(names)}"
                raise SimulatorError(msg)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        logger.info("regions.started", extra={"regions": [r.name for r in self.regions]})

    def _start(self) -> None:
        self.pki = pki = FleetPKI.load_or_create(self.state_dir / "pki")
        for region in self.regions:
            server = pki.server_certificate(
                region.name, dns_names=[region.endpoint], ip_addresses=[region.host]
            )
            tls = TLSFiles(
                ca_path=pki.ca_path, cert_path=server.cert_path, key_path=server.key_path
            )
            # The broker listens in plain MQTT only; devices reach it through the region's
            # gateway (the door), which terminates mTLS on the mqtts port.
            spec = BrokerSpec(
                region=region.name, state_dir=self.state_dir, host=region.host, port=self.ports.mqtt
            )
            broker = self._stack.enter_context(start_broker(spec, kind=self.broker_kind))
            shadows = ShadowService(
                region.name,
                http_host=region.host,
                http_port=self.ports.data,
                broker=(broker.host, broker.port),
            )
            shadows.start()
            self._stack.callback(shadows.stop)
            leaves = [
                self._stack.enter_context(
                    start_broker(
                        dataclasses.replace(
                            spec, port=0, shard=shard, bridge_to=(broker.host, broker.port)
                        ),
                        kind=self.broker_kind,
                    )
                )
                for shard in range(1, self.broker_shards)
            ]
            self._regions[region.name] = _Region(region, broker, shadows, tls, leaves=leaves)
        self.control_plane = control_plane = self._stack.enter_context(
            start_control_plane(
                state_dir=self.state_dir,
                port=self.ports.control_plane,
                brokers={name: (r.broker.host, r.broker.port) for name, r in self._regions.items()},
                quotas=self.quotas,
                region_quotas=self.region_quotas,
                thing_type_delete_after_s=self.thing_type_delete_after_s,
            )
        )
        checker = pki.issue_device(HEALTH_CHECKER_ID) if self.health is not None else None
        for name, running in self._regions.items():
            if checker is not None:
                register_device(control_plane.url, name, checker)
            config = GatewayConfig(
                region=name,
                host=running.spec.host,
                port=self.ports.mqtts,
                tls=running.tls,
                broker=(running.broker.host, running.broker.port),
                control_plane_url=control_plane.url,
                limits=(self.door_limits or {}).get(name, ConnectLimits()),
                faults=GatewayFault(exempt_client_ids=frozenset({HEALTH_CHECKER_ID})),
                device_brokers=tuple((leaf.host, leaf.port) for leaf in running.leaves),
            )
            gateway: RegionDoor
            if self.door_processes > 0:
                gateway = GatewayProcesses(
                    config, processes=self.door_processes, log_dir=self.state_dir / "doors"
                )
            else:
                gateway = ThreadedRegionGateway(config)
            gateway.start()
            self._stack.callback(gateway.stop)
            running.gateway = gateway
        zone = default_zone(self.regions)
        self.dns = self._stack.enter_context(
            ThreadedDNSServer(zone, host="127.0.0.1", port=self.ports.dns)
        )
        if checker is not None:
            self._start_health_checker(pki, checker)

    def _start_health_checker(self, pki: FleetPKI, identity: CertifiedKey) -> None:
        assert self.dns is not None
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        checker = HealthChecker(
            self.dns.zone,
            self.regions,
            ports={name: r.gateway.port for name, r in self._regions.items() if r.gateway},
            ssl_context=context,
            client_id=HEALTH_CHECKER_ID,
            config=self.health,
        )
        runner = LoopThread("health-checker")
        runner.start()
        self._stack.callback(runner.stop)
        runner.run(_start(checker))
        self._stack.callback(runner.run, checker.stop())
        self.health_checker = checker

    def stop(self) -> None:
        """Stop everything this instance started (by PID for the child processes)."""
        self._regions.clear()
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.dns = None
        self.control_plane = None
        self.health_checker = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what runs where ----------------------------------------------------------------

    def broker(self, region: str) -> Broker:
        """The broker of ``region``."""
        return self._region(region).broker

    def shadows(self, region: str) -> ShadowService:
        """The shadow service of ``region``."""
        return self._region(region).shadows

    def door(self, region: str) -> RegionDoor:
        """The door of ``region``, a thread or processes (see ``door_processes``)."""
        gateway = self._region(region).gateway
        if gateway is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        return gateway

    def gateway(self, region: str) -> ThreadedRegionGateway:
        """The door of ``region`` running in this process (``door_processes=0``)."""
        gateway = self.door(region)
        if not isinstance(gateway, ThreadedRegionGateway):
            msg = f"the door of {region} runs as processes; use door({region!r})"
            raise SimulatorError(msg)
        return gateway

    def set_fault(self, region: str, mode: str) -> None:
        """Switch ``region``'s door: down, blackhole, partial, degraded or up."""
        self.door(region).set_fault(mode)

    def set_control_plane(self, region: str, mode: OutageMode) -> None:
        """Switch ``region``'s control plane: ``up``, ``http503`` or ``drop``."""
        self._region(region)
        if self.control_plane is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        self.control_plane.set_outage(region, mode)

    def set_control_plane_quotas(self, region: str, quotas: Mapping[str, float]) -> None:
        """Give ``region``'s control plane TPS quotas of its own over ``quotas``; ``{}`` resets.

        Raises:
            SimulatorError: the regions are not running, or a rate is refused.
        """
        self._region(region)
        if self.control_plane is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        self.control_plane.admin.set_quotas(region, quotas)

    def register_fleet(
        self,
        devices: Sequence[CertifiedKey],
        regions: Sequence[str] | None = None,
        *,
        policy: BulkPolicy | None = None,
        door_timeout_s: float = 60.0,
    ) -> dict[str, BulkResult]:
        """Register ``devices`` in ``regions`` (all by default) as the fleet's steady state.

        In each region every device's certificate is registered ACTIVE, a thing
        of the device's name is created and the certificate attached to it (and
        ``policy``, by default the region's default device policy, attached to
        every certificate), in bulk: unthrottled, and
        without registry events, as if the replicator had already caught up.
        Returns once each region's door admits every device (its registry view
        has the certificates ACTIVE and attached to their things). Registering
        a device again changes nothing.

        Raises:
            SimulatorError: the regions are not running, a region is unknown, the
                control plane refused a device, or a door did not see the
                certificates within ``door_timeout_s``.
        """
        names = list(regions) if regions is not None else [r.name for r in self.regions]
        for name in names:
            self._region(name)
        if self.control_plane is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        batch = [
            BulkDevice(thing_name=d.name, certificate_pem=d.cert_path.read_text()) for d in devices
        ]
        results = {
            name: self.control_plane.admin.bulk_register(name, batch, policy=policy)
            for name in names
        }
        wanted = {d.certificate_id: d.name for d in devices}
        deadline = time.monotonic() + door_timeout_s
        for name in names:
            self._wait_for_door(name, wanted, deadline)
        logger.info("regions.fleet_registered", extra={"regions": names, "devices": len(devices)})
        return results

    def _wait_for_door(self, region: str, wanted: Mapping[str, str], deadline: float) -> None:
        """Wait until ``region``'s door has every certificate ACTIVE and attached to its thing."""
        door = self.door(region)
        while True:
            pending = door.pending(wanted)
            if not pending:
                return
            if time.monotonic() >= deadline:
                msg = (
                    f"the door of {region} did not see {pending} of {len(wanted)} "
                    "bulk-registered certificates in time"
                )
                raise SimulatorError(msg)
            time.sleep(0.1)

    def endpoints(self) -> dict[str, Any]:
        """Every endpoint as one JSON-ready object (what ``iotdr sim regions up`` prints)."""
        if self.pki is None or self.dns is None or self.control_plane is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        return {
            "regions": {
                name: {
                    "role": "primary" if name == self.regions[0].name else "secondary",
                    "host": r.spec.host,
                    "endpoint": r.spec.endpoint,
                    "mqtt": f"{r.broker.host}:{r.broker.port}",
                    "leaf_brokers": [f"{b.host}:{b.port}" for b in r.leaves],
                    "mqtts": f"{r.gateway.host}:{r.gateway.port}" if r.gateway else None,
                    "gateway_admin_url": r.gateway.admin_url if r.gateway else None,
                    "gateway": r.gateway.status() if r.gateway else None,
                    "broker": r.broker.kind,
                    "broker_pid": r.broker.pid,
                    "mqtt5": r.broker.mqtt5,
                    "data_url": r.shadows.url,
                }
                for name, r in self._regions.items()
            },
            "health_checker": self.health_checker.status() if self.health_checker else None,
            "control_plane_url": self.control_plane.url,
            "control_plane_pid": self.control_plane.pid,
            "dns": f"{self.dns.host}:{self.dns.port}",
            "zone": f"{DEFAULT_DOMAIN}.",
            "device_name": f"iot.{DEFAULT_DOMAIN}",
            "ca": str(self.pki.ca_path),
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
        }

    def write_regions_file(self) -> Path:
        """Write :meth:`endpoints` to ``<state_dir>/regions.json`` (for status and fault)."""
        path = self.state_dir / REGIONS_FILE
        # Rewritten every few seconds while readers (status, fault) may be reading:
        # write a sibling and rename it over, so that a reader never sees half a file.
        partial = path.with_name(f".{REGIONS_FILE}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.endpoints(), indent=2, sort_keys=True) + "\n")
        partial.replace(path)
        return path

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            known = ", ".join(self._regions) or "none running"
            msg = f"unknown region {name!r} (known: {known})"
            raise SimulatorError(msg)
        return region


LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
"""What boto3 signs with for the local regions: any key is accepted there."""


_PATIENT = botocore.config.Config(retries={"mode": "adaptive", "total_max_attempts": 30})
"""Retries that wait out AWS's TPS quotas (adaptive mode also slows the client down)."""


def iot_client(control_plane_url: str, region: str) -> IoTClient:
    """A boto3 IoT client of ``region`` on the local control plane that waits out throttling."""
    client: IoTClient = boto3.client(  # type: ignore[call-overload]
        "iot",
        region_name=region,
        endpoint_url=control_plane_url,
        config=_PATIENT,
        **LOCAL_CREDENTIALS,
    )
    return client


def register_device(
    control_plane_url: str,
    region: str,
    device: CertifiedKey,
    *,
    iot: IoTClient | None = None,
) -> str:
    """Register ``device``'s certificate ACTIVE in ``region``, attached to a thing of its name.

    Through the AWS APIs (RegisterCertificateWithoutCA, CreateThing,
    AttachThingPrincipal, and CreatePolicy once and AttachPolicy of the
    region's default device policy, :func:`~simulators.controlplane.device_policy`,
    without which AWS IoT admits no device): throttled at the region's quotas
    (the client waits them out) and published as registry events, as on AWS. For a fleet's
    steady state use :meth:`LocalRegions.register_fleet` instead.

    Args:
        control_plane_url: the local control plane.
        region: where to register.
        device: the identity.
        iot: a client of ``region`` to reuse (:func:`iot_client`); one is built if None.

    Returns the certificate's ARN. Idempotent (an existing thing or certificate is reused).

    Raises:
        SimulatorError: the control plane refused a call or could not be reached.
    """
    iot = iot or iot_client(control_plane_url, region)
    try:
        return _register(iot, device)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        msg = f"cannot register {device.name} in {region}: {exc}"
        raise ControlPlaneError(msg, region=region) from exc


def _register(iot: IoTClient, device: CertifiedKey) -> str:
    try:
        arn = iot.register_certificate_without_ca(
            certificatePem=device.cert_path.read_text(), status="ACTIVE"
        )["certificateArn"]
    except iot.exceptions.ResourceAlreadyExistsException:
        arn = iot.describe_certificate(certificateId=device.certificate_id)[
            "certificateDescription"
        ]["certificateArn"]
    iot.create_thing(thingName=device.name)
    # The policy first: a door that sees the thing attached then knows the policy too.
    attach_device_policy(iot, str(arn))
    iot.attach_thing_principal(thingName=device.name, principal=arn)
    return str(arn)


def attach_device_policy(iot: IoTClient, certificate_arn: str) -> str:
    """Attach the region's default device policy to a certificate (creating it once); its name."""
    account = certificate_arn.split(":")[4]
    policy = device_policy(iot.meta.region_name, account)
    with contextlib.suppress(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_policy(policyName=policy.name, policyDocument=policy.document)
    iot.attach_policy(policyName=policy.name, target=certificate_arn)
    return policy.name


def read_regions_file(state_dir: Path) -> dict[str, Any]:
    """The endpoints written by a running ``iotdr sim regions up`` in ``state_dir``.

    Raises:
        SimulatorError: none is running there.
    """
    path = state_dir / REGIONS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        msg = (
            f"no local regions are running with state directory {state_dir} "
            f"({path} not found); start them with `iotdr sim regions up`"
        )
        raise SimulatorError(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"{path} cannot be read: {exc}"
        raise SimulatorError(msg) from exc
    return data


def probe_regions(endpoints: Mapping[str, Any]) -> dict[str, Any]:
    """Which parts of running regions answer: a TCP connect to each listener, the PIDs."""

    def answers(address: str) -> bool:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            return False

    def alive(pid: object) -> bool:
        if not isinstance(pid, int):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    regions = {}
    for name, region in endpoints.get("regions", {}).items():
        data_address = str(region.get("data_url", "")).removeprefix("http://")
        regions[name] = {
            "mqtt": answers(region.get("mqtt", "")),
            "mqtts": answers(region.get("mqtts", "")),
            "data": answers(data_address),
            "broker_pid_alive": alive(region.get("broker_pid")),
        }
    control = str(endpoints.get("control_plane_url", "")).removeprefix("http://")
    return {
        "running": alive(endpoints.get("pid")),
        "regions": regions,
        "control_plane": answers(control),
        "dns": answers(str(endpoints.get("dns", ""))),
        "cname": _cname(str(endpoints.get("dns", "")), str(endpoints.get("device_name", ""))),
    }


def _cname(server: str, name: str) -> str | None:
    """Where the device-facing name points now, asked of the running DNS server."""
    host, _, port = server.rpartition(":")
    try:
        query = dns.message.make_query(name, "CNAME")
        answer = dns.query.udp(query, host, port=int(port), timeout=1.0)
    except (OSError, ValueError, dns.exception.DNSException):
        return None
    for rrset in answer.answer:
        return str(rrset[0].target).rstrip(".")
    return None
