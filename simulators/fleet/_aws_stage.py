"""Real AWS IoT as a fleet run's stage (``iotdr sim run --target aws``).

:class:`AwsStage` is the :class:`~simulators.fleet._play.Stage` of a drill
against a test account: no local regions. The devices (the same device
hosts, each the real agent) resolve the CNAME of :class:`AwsTarget` with
the resolver given and connect to the regions' ATS endpoints with the
identities of ``results.json``. Faults are on the devices' side only
(played by the fleet, never by this stage; :func:`check_aws_plan` refused
the others before the run); a ``dns`` step is a Route 53 UPSERT of the
CNAME, by the owner shard. The cloud side counts arrivals with the
observer identity over mTLS, and shadows are read with ``GetThingShadow``.
AWS's doors cannot be read, so the report has no door counters.

The boto3 clients are built in one place, :func:`aws_clients`, from one
session (the environment's credentials), and passed in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from simulators._errors import SimulatorError
from simulators.fleet._aws_target import route53_change
from simulators.fleet._cloud import CloudCounter, CountedArrivals, CounterTLS
from simulators.fleet._regions_stage import check_shadows
from simulators.fleet._scenario import DnsStep, HealStep

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Mapping, Sequence

    from simulators.fleet._aws_target import AwsIdentities, AwsTarget, Identity
    from simulators.fleet._play import DeviceEntry, FleetFinal
    from simulators.fleet._records import DoorSample, RunRecord, ShadowCheck
    from simulators.fleet._scenario import Scenario, Step
    from simulators.fleet._shard import Shard

__all__ = ["AwsClients", "AwsStage", "aws_clients"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AwsClients:
    """The AWS APIs a drill calls: Route 53 (global) and iot-data per region."""

    route53: Any
    iot_data: Mapping[str, Any]


def aws_clients(target: AwsTarget, session: Any = None) -> AwsClients:
    """boto3 clients for ``target`` from ``session`` (default: the environment's credentials)."""
    import boto3  # noqa: PLC0415

    session = session or boto3.Session()
    return AwsClients(
        route53=session.client("route53"),
        iot_data={
            region: session.client(
                "iot-data", region_name=region, endpoint_url=f"https://{endpoint}"
            )
            for region, endpoint in target.endpoints.items()
        },
    )


class AwsStage(CountedArrivals):
    """AWS IoT in a test account as a run's stage.

    Args:
        scenario: the run's scenario (already checked by :func:`check_aws_plan`).
        target: where the fleet goes.
        identities: ``results.json``, read.
        shard: which shard this run is (shard 0 flips Route 53).
        clients: the AWS clients (:func:`aws_clients`).
    """

    def __init__(
        self,
        scenario: Scenario,
        target: AwsTarget,
        identities: AwsIdentities,
        *,
        shard: Shard,
        clients: AwsClients,
    ) -> None:
        self.scenario = scenario
        self.target = target
        self.identities = identities
        self.shard = shard
        self.clients = clients
        self.counter: CloudCounter | None = None
        self._by_name: dict[str, Identity] = {d.name: d for d in identities.devices}
        self._mine: set[str] = set()

    def __repr__(self) -> str:
        return f"AwsStage({list(self.target.endpoints)}, shard {self.shard})"

    def fleet_names(self, count: int) -> list[str]:
        """The first ``count`` devices of ``results.json`` (the fleet, before sharding).

        Raises:
            SimulatorError: ``results.json`` has fewer.
        """
        have = len(self.identities.devices)
        if count > have:
            msg = (
                f"{self.target.identities}/results.json has {have} identities and the run "
                f"needs {count}: give --devices {have} or provision more"
            )
            raise SimulatorError(msg)
        return [d.name for d in self.identities.devices[:count]]

    def endpoints(self) -> dict[str, Any]:
        """Where the devices go, in the shape the device hosts read."""
        return {
            "ca": str(self.target.ca),
            "dns": f"{self.target.dns[0]}:{self.target.dns[1]}",
            "device_name": self.target.device_name,
            "regions": {
                region: {"endpoint": host, "mqtts": f"{host}:{self.target.port}"}
                for region, host in self.target.endpoints.items()
            },
        }

    def start(self, stack: contextlib.ExitStack, record: RunRecord) -> None:
        """Start the cloud-side counter with the observer identity."""
        record.settings.update(self.target.as_settings())
        observer = self.identities.observer
        if observer is None:
            msg = (
                f"{self.target.identities}/results.json has no observer identity: the drill "
                "counts arrivals in the cloud with it (see docs/simulators.md)"
            )
            raise SimulatorError(msg)
        self.counter = CloudCounter(
            {r: (host, self.target.port) for r, host in self.target.endpoints.items()},
            client_id=f"{observer.name}-{self.shard.index}",
            keep=self._mine.__contains__,
            tls=CounterTLS(ca=self.target.ca, cert=observer.cert, key=observer.key),
        )
        self.counter.start(timeout_s=30.0)
        stack.callback(self.counter.stop)

    def start_replicator(self) -> None:
        """Nothing: on AWS the replicator is the account's own."""

    def provision(self, names: Sequence[str]) -> list[DeviceEntry]:
        """These devices' identities (``bulk-provision`` registered them already)."""
        entries = []
        for name in names:
            identity = self._by_name[name]
            self._mine.add(name)
            entries.append({"name": name, "cert": str(identity.cert), "key": str(identity.key)})
        return entries

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """Refused (``check_aws_plan`` refuses ``create_devices`` before the run)."""
        msg = f"--target aws cannot create {len(names)} devices during a run"
        raise SimulatorError(msg)

    async def apply(self, step: Step) -> str:
        """A ``dns`` step flips Route 53 (owner shard); a heal has no door to heal."""
        if isinstance(step, HealStep):
            return "up"
        if isinstance(step, DnsStep):
            if self.shard.owner:
                await asyncio.to_thread(self.flip, step.cname)
            return "cname"
        msg = f"--target aws cannot carry out {step!r} (faults are on the devices' side)"
        raise SimulatorError(msg)

    def flip(self, region: str) -> str:
        """Point the Route 53 CNAME at ``region``'s endpoint; the change's id.

        Raises:
            SimulatorError: no record configured, or Route 53 refused the change.
        """
        flip = self.target.route53
        if flip is None:
            msg = "no Route 53 record to flip: give [route53] hosted_zone_id"
            raise SimulatorError(msg)
        request = route53_change(
            flip,
            self.target.endpoints[region],
            comment=f"iotdr sim run {self.scenario.name}: devices to {region}",
        )
        try:
            answer = self.clients.route53.change_resource_record_sets(**request)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            msg = f"Route 53 refused pointing {flip.record_name} at {region}: {exc}"
            raise SimulatorError(msg) from exc
        change_id = str(answer["ChangeInfo"]["Id"])
        logger.info("fleet.route53_flip", extra={"region": region, "change": change_id})
        return change_id

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:  # noqa: ARG002
        """Nothing: AWS's doors cannot be read (no samples, no replicator lag)."""
        return [], None

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Each device's last reported state, read with GetThingShadow in each region."""
        return await asyncio.to_thread(check_shadows, self.scenario, final, self.reported)

    def reported(self, region: str, device: str) -> dict[str, Any]:
        """``device``'s reported state in ``region`` ({} without a shadow, or on an error)."""
        try:
            answer = self.clients.iot_data[region].get_thing_shadow(thingName=device)
            document = json.loads(answer["payload"].read())
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError):
            return {}
        state: dict[str, Any] = document.get("state", {}).get("reported", {})
        return state
