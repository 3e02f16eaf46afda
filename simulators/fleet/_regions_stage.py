"""The local regions as a fleet run's stage: regions, cloud-side counter, replicator, JITR.

:class:`RegionsStage` is the :class:`~simulators.fleet._play.Stage` of
``iotdr sim run``: it starts the scenario's local regions with its quotas,
provisions the fleet in bulk, runs ``iotdr replicator run --failback auto``
(and, for ``replication: jitr``, a device CA and ``iotdr replicator jitr`` in
the secondary) as processes of their own, carries out the timeline's steps,
and measures the doors, the replicator's lag, the arrivals and the shadows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators._topology import DEFAULT_DOMAIN, LocalRegion
from simulators.fleet._cloud import CloudCounter, CountedArrivals
from simulators.fleet._records import DoorSample, RunRecord, ShadowCheck
from simulators.fleet._replicator_process import FleetReplicator, spawn_service, stop_process
from simulators.fleet._scenario import DnsStep, FaultStep, HealStep, ReplicatorStep

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from simulators._pki import CertifiedKey, FleetPKI
    from simulators._regions import LocalRegions
    from simulators.fleet._play import DeviceEntry, FleetFinal
    from simulators.fleet._scenario import Scenario, Step

logger = logging.getLogger(__name__)

__all__ = ["RegionsStage", "check_shadows", "door_sample", "local_regions_for", "region_scale"]

# What one process may hold here: 20,000 files. A door process holds two sockets
# per device (the device's and the broker's), a broker one per device.
DEVICES_PER_DOOR_PROCESS = 8_000
DEVICES_PER_BROKER = 15_000
_THREADED_DOOR_DEVICES = 1_500

_SHADOW_SETTLE_S = 30.0
_CONTROL_PLANE_MODES = {"control-plane-down": "http503", "control-plane-drop": "drop"}


def region_scale(
    devices: int, *, door_processes: int | None = None, broker_shards: int | None = None
) -> tuple[int, int]:
    """Door processes and brokers per region for a fleet of ``devices`` (given values win).

    Up to 1,500 devices the door runs in a thread of the driver (0 processes);
    beyond, as processes of their own, at least two (the door relays every
    packet and a connect costs it 2.6 ms of CPU: one process tops out near
    310 connects/s) and one per 8,000 devices (two sockets per device, 20,000
    files per process). One broker per 15,000 devices (leaves bridged to the
    region's broker).
    """
    if door_processes is None:
        door_processes = (
            0
            if devices <= _THREADED_DOOR_DEVICES
            else max(2, -(-devices // DEVICES_PER_DOOR_PROCESS))
        )
    if broker_shards is None:
        broker_shards = max(1, -(-devices // DEVICES_PER_BROKER))
    return door_processes, broker_shards


def local_regions_for(names: Sequence[str]) -> tuple[LocalRegion, ...]:
    """The scenario's regions on loopback: the first on 127.0.0.2, the next on .3, ..."""
    return tuple(
        LocalRegion(name=name, host=f"127.0.0.{2 + i}", domain=DEFAULT_DOMAIN)
        for i, name in enumerate(names)
    )


class RegionsStage(CountedArrivals):
    """The local regions as a run's :class:`~simulators.fleet._play.Stage`.

    The regions (with the scenario's quotas), the cloud-side counter on each
    broker, and the replicator as a process of its own (``iotdr replicator
    run --failback auto``, what a DR deployment runs).
    """

    def __init__(
        self,
        scenario: Scenario,
        state: Path,
        *,
        broker: str = "auto",
        door_processes: int = 0,
        broker_shards: int = 1,
    ) -> None:
        self.scenario = scenario
        self.state = state
        self.broker_kind = broker
        self.door_processes = door_processes
        self.broker_shards = broker_shards
        self.regions: LocalRegions | None = None
        self.counter: CloudCounter | None = None
        self.replicator = FleetReplicator(scenario, state, self.endpoints)
        self.identities: dict[str, CertifiedKey] = {}
        self.jitr_pki: FleetPKI | None = None

    def __repr__(self) -> str:
        return f"RegionsStage({list(self.scenario.regions)}, state={str(self.state)!r})"

    def start(self, stack: contextlib.ExitStack, record: RunRecord) -> None:
        """Start the regions and the counter; ``stack`` stops them (the replicator first)."""
        from simulators._regions import LocalRegions  # noqa: PLC0415
        from simulators.fleet._scenario import region_settings  # noqa: PLC0415

        self.regions = LocalRegions(
            state_dir=self.state / "regions",
            regions=local_regions_for(self.scenario.regions),
            broker_kind=self.broker_kind,  # type: ignore[arg-type]
            door_processes=self.door_processes,
            broker_shards=self.broker_shards,
            **region_settings(self.scenario),
        )
        stack.enter_context(self.regions)
        kind = self.regions.broker(self.scenario.regions[0]).kind
        record.settings["broker"] = kind
        if kind != "mosquitto":
            why = "mosquitto is not installed" if self.broker_kind == "auto" else "--broker amqtt"
            record.notes.append(
                f"{why}: the regions run the embedded amqtt broker (MQTT 3.1.1 only, "
                "about 200 devices on 2 cores); apt-get install mosquitto for MQTT 5 and "
                "a larger fleet"
            )
        self.counter = CloudCounter(
            {
                name: (self.regions.broker(name).host, self.regions.broker(name).port)
                for name in self.scenario.regions
            }
        )
        self.counter.start()
        stack.callback(self.counter.stop)
        # Stopped before the regions (it would log their departure as an outage).
        stack.callback(self.stop_replicator)
        if self.scenario.replication == "jitr":
            self._start_jitr(stack)

    def running(self) -> LocalRegions:
        """The running regions (SimulatorError before start)."""
        if self.regions is None:
            msg = "the local regions are not running"
            raise SimulatorError(msg)
        return self.regions

    # -- devices -------------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        """Where everything runs (:meth:`LocalRegions.endpoints`; the device hosts read it)."""
        return self.running().endpoints()

    def provision(self, names: Sequence[str]) -> list[DeviceEntry]:
        """The fleet's identities, registered in every region at once (bulk, no events)."""
        from simulators.fleet._provision import provision_fleet  # noqa: PLC0415

        for identity in provision_fleet(self.running(), names):
            self.identities[identity.name] = identity
        return [self.entry(name) for name in names]

    def entry(self, name: str) -> DeviceEntry:
        """What a device host needs to run ``name``."""
        identity = self.identities[name]
        return {"name": name, "cert": str(identity.cert_path), "key": str(identity.key_path)}

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """New devices in the primary only, through the AWS APIs (registry events follow)."""
        from simulators.fleet._provision import register_new_devices  # noqa: PLC0415

        identities = await asyncio.to_thread(
            register_new_devices,
            self.running(),
            list(names),
            region=self.scenario.regions[0],
            pki=self.jitr_pki,
        )
        for identity in identities:
            self.identities[identity.name] = identity
        return [self.entry(name) for name in names]

    # -- the timeline ----------------------------------------------------------------------

    async def apply(self, step: Step) -> str:
        """Carry out a fault, heal, DNS or replicator step."""
        regions = self.running()
        if isinstance(step, FaultStep):
            if step.mode in _CONTROL_PLANE_MODES:
                regions.set_control_plane(step.region, _CONTROL_PLANE_MODES[step.mode])  # type: ignore[arg-type]
            else:
                await asyncio.to_thread(regions.set_fault, step.region, step.mode)
            return step.mode
        if isinstance(step, HealStep):
            await asyncio.to_thread(regions.set_fault, step.region, "up")
            regions.set_control_plane(step.region, "up")
            return "up"
        if isinstance(step, DnsStep):
            assert regions.dns is not None
            target = next(r for r in regions.regions if r.name == step.cname)
            regions.dns.zone.set("iot", "CNAME", target.endpoint + ".")
            return "cname"
        if isinstance(step, ReplicatorStep):
            if step.action == "stop":
                await asyncio.to_thread(self.stop_replicator)
            else:
                self.start_replicator()
            return step.action
        msg = f"the local regions cannot carry out {step!r}"
        raise SimulatorError(msg)

    # -- the replicator ----------------------------------------------------------------------

    def start_replicator(self) -> None:
        """``iotdr replicator run`` between the first two regions, unless replication is off."""
        self.replicator.start()

    def stop_replicator(self) -> None:
        """Stop the replicator (by PID; SIGKILL after 15 s)."""
        self.replicator.stop()

    def _start_jitr(self, stack: contextlib.ExitStack) -> None:
        """JITR in the secondary: a device CA registered in every region, the handler running.

        Devices created during a ``jitr`` run get certificates of this CA. It is
        registered with auto-registration in the secondary, so a device's first
        connect there registers its certificate PENDING_ACTIVATION and is refused,
        and ``iotdr replicator jitr`` activates it; in the primary it is registered
        (for TLS) and the devices are registered ACTIVE as usual.
        """
        from simulators._pki import FleetPKI  # noqa: PLC0415
        from simulators._regions import iot_client  # noqa: PLC0415

        regions = self.running()
        assert regions.control_plane is not None
        url = regions.control_plane.url
        self.jitr_pki = FleetPKI.create(self.state / "jitr-ca", common_name="iotdr fleet device CA")
        pem = self.jitr_pki.ca_path.read_text()
        primary, secondary = self.scenario.regions[0], self.scenario.regions[1]
        ca_id = ""
        for name in self.scenario.regions:
            ca_id = iot_client(url, name).register_ca_certificate(
                caCertificate=pem, setAsActive=True, allowAutoRegistration=name != primary
            )["certificateId"]
        deadline = time.monotonic() + 30
        while any(
            regions.door(name).status()["registry"]["ca_certificates"] < 1
            for name in self.scenario.regions
        ):
            if time.monotonic() > deadline:
                msg = "the regions' doors did not learn the JITR device CA within 30 s"
                raise SimulatorError(msg)
            time.sleep(0.1)
        policy = self.state / "jitr-policy.json"
        policy.write_text(json.dumps(_DEVICE_POLICY))
        broker = regions.broker(secondary)
        command = [
            sys.executable, "-m", "device_agent.cli", "replicator", "jitr",
            "--region", secondary, "--endpoint-url", url,
            "--feed", f"{broker.host}:{broker.port}", "--feed-client-id", "iotdr-fleet-jitr",
            "--policy", "iotdr-fleet-device", "--policy-document", str(policy),
            "--ca", ca_id, "--primary-region", primary, "--primary-endpoint-url", url,
            "--journal", str(self.state / "jitr.sqlite"), "--sweep-interval", "30", "--json",
        ]  # fmt: skip
        process = spawn_service(command, self.state, "jitr.log")
        stack.callback(stop_process, process)

    # -- measuring -----------------------------------------------------------------------------

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """Each door's counters and the replicator's oldest pending change."""
        return await asyncio.to_thread(self._sample, t)

    def _sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        regions = self.running()
        doors = []
        for name in self.scenario.regions:
            try:
                doors.append(door_sample(t, name, regions.door(name).status()))
            except Exception:  # noqa: BLE001 - a busy door must not stop the run
                logger.debug("fleet.door_sample_failed", extra={"region": name})
        return doors, self.replicator.lag()

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Each device's last reported state in its region (and, replicated, in the others)."""
        return await asyncio.to_thread(self._check_shadows, final)

    def _check_shadows(self, final: FleetFinal) -> ShadowCheck:
        regions = self.running()

        def reported(region: str, device: str) -> dict[str, Any]:
            document = regions.shadows(region).store.get(device).document or {}
            state: dict[str, Any] = document.get("state", {}).get("reported", {})
            return state

        return check_shadows(self.scenario, final, reported)


def door_sample(t: float, region: str, status: dict[str, Any]) -> DoorSample:
    """A door's status (its admin ``/status``) as a sample; ``handshakes`` where it counts them."""
    handshakes = status.get("handshakes")
    return DoorSample(
        t,
        region,
        int(status["connections"]["live"]),
        int(status["admitted"]),
        {str(k): int(v) for k, v in status["refused"].items()},
        int(handshakes) if isinstance(handshakes, int) else None,
        {str(k): int(v) for k, v in (status.get("denied") or {}).items()},
    )


def check_shadows(
    scenario: Scenario,
    final: FleetFinal,
    reported: Callable[[str, str], dict[str, Any]],
    *,
    settle_s: float = _SHADOW_SETTLE_S,
) -> ShadowCheck:
    """Every device's last reported state against ``reported(region, device)`` (bounded wait).

    In every region when replicated, else in the device's own; waits up to
    ``settle_s`` for the last updates (and the replicator) to land.
    """
    deadline = time.monotonic() + settle_s
    expected = {d: s for d, s in final.reported.items() if s.get("seq", 0)}
    while True:
        diverged = []
        for device, state in expected.items():
            where = (
                list(scenario.regions)
                if scenario.replication != "off"
                else [final.region.get(device) or scenario.regions[0]]
            )
            for region in where:
                have = reported(region, device)
                if any(have.get(k) != v for k, v in state.items()):
                    diverged.append(device)
                    break
        if not diverged or time.monotonic() >= deadline:
            return ShadowCheck(len(expected), len(diverged), tuple(sorted(diverged)[:200]))
        time.sleep(1.0)


_DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"],
            "Resource": "*",
        }
    ],
}
"""The policy JITR attaches to the devices it activates: everything, in any region."""
