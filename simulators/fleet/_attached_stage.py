"""Regions that are already running as a fleet run's stage: ``iotdr sim run --regions STATE_DIR``.

:class:`AttachedStage` is the :class:`~simulators.fleet._play.Stage` of a run
(usually one shard of several) against the local regions that ``iotdr sim
regions up`` started and described in ``STATE_DIR/regions.json``. It reaches
everything the way the other commands do, over the network: the doors
through their admin URLs (faults, counters), the control plane through its
admin endpoints (outages, quotas, bulk registration) and boto3 (devices
created during the run), the DNS server by DNS UPDATE, the shadows through
the iot-data HTTP API, the brokers' plain listeners for the cloud-side
counter. The identities come from the regions' own fleet CA (their state
directory's ``pki/``).

Shards share the regions, so:

* region steps (door and control-plane faults, heals, DNS, the replicator)
  are carried out by the owner shard (shard 0) only; the others record them;
* the replicator (``iotdr replicator run --failback auto``; ``regions up``
  runs none) is run by the owner, unless ``replication: off``; ``jitr`` is
  refused (its device CA and handler belong to one run);
* each shard provisions its own devices in bulk, counts only its own
  devices' arrivals (client IDs of its own) and checks only their shadows;
* the doors keep the CONNECT quotas ``regions up`` gave them (AWS's
  defaults); the scenario's control-plane quotas are applied by the owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._cloud import CloudCounter, CountedArrivals
from simulators.fleet._regions_stage import check_shadows, door_sample
from simulators.fleet._replicator_process import FleetReplicator
from simulators.fleet._scenario import DnsStep, FaultStep, HealStep, ReplicatorStep

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Sequence

    from simulators._pki import CertifiedKey, FleetPKI
    from simulators.fleet._play import DeviceEntry, FleetFinal
    from simulators.fleet._records import DoorSample, RunRecord, ShadowCheck
    from simulators.fleet._scenario import Scenario, Step
    from simulators.fleet._shard import Shard

__all__ = ["AttachedStage"]

logger = logging.getLogger(__name__)

_CONTROL_PLANE_MODES = {"control-plane-down": "http503", "control-plane-drop": "drop"}
_DOOR_WAIT_S = 60.0


class AttachedStage(CountedArrivals):
    """Running local regions (``regions.json`` in ``regions_dir``) as a run's stage.

    Args:
        scenario: the run's scenario; its regions must be those running, primary first.
        state: this run's state directory (its replicator's journal and log).
        regions_dir: the state directory of ``iotdr sim regions up``.
        shard: which shard this run is (shard 0 owns the region steps).
    """

    def __init__(self, scenario: Scenario, state: Path, regions_dir: Path, *, shard: Shard) -> None:
        self.scenario = scenario
        self.state = state
        self.regions_dir = regions_dir
        self.shard = shard
        self.described: dict[str, Any] | None = None
        self.counter: CloudCounter | None = None
        self.replicator = FleetReplicator(scenario, state, self.endpoints)
        self.identities: dict[str, CertifiedKey] = {}
        self._pki: FleetPKI | None = None

    def __repr__(self) -> str:
        return f"AttachedStage({str(self.regions_dir)!r}, shard {self.shard})"

    def endpoints(self) -> dict[str, Any]:
        """Where the regions are (``regions.json``; SimulatorError before :meth:`start`)."""
        if self.described is None:
            msg = f"the regions in {self.regions_dir} are not attached yet"
            raise SimulatorError(msg)
        return self.described

    def start(self, stack: contextlib.ExitStack, record: RunRecord) -> None:
        """Attach: check the regions answer and match the scenario; start the counter."""
        from simulators._regions import probe_regions, read_regions_file  # noqa: PLC0415

        described = read_regions_file(self.regions_dir)
        health = probe_regions(described)
        down = [
            f"{name} {part}"
            for name, parts in health["regions"].items()
            for part, ok in parts.items()
            if not ok
        ]
        down += [part for part in ("control_plane", "dns") if not health[part]]
        if not health["running"] or down:
            why = ", ".join(down) or "its process is gone"
            msg = f"the local regions in {self.regions_dir} do not answer ({why}); restart them"
            raise SimulatorError(msg)
        running = list(described["regions"])
        if running != list(self.scenario.regions):
            msg = (
                f"scenario {self.scenario.name} plays regions {list(self.scenario.regions)} "
                f"but {self.regions_dir} runs {running} (primary first)"
            )
            raise SimulatorError(msg)
        if self.scenario.replication == "jitr":
            msg = (
                "replication: jitr cannot run against attached regions (its device CA and "
                "handler belong to one run); run it without --regions"
            )
            raise SimulatorError(msg)
        self.described = described
        record.settings["broker"] = described["regions"][running[0]].get("broker")
        record.settings["regions_dir"] = str(self.regions_dir)
        if any(
            q.connect_per_s is not None or q.connect_per_client_id_per_s is not None
            for q in self.scenario.quotas.values()
        ):
            record.notes.append(
                "attached regions: the doors keep the CONNECT quotas `iotdr sim regions up` "
                "gave them (AWS's defaults); the scenario's connect quotas were not applied"
            )
        if self.shard.owner:
            self._apply_api_quotas()
        self.counter = CloudCounter(
            {name: _address(r["mqtt"]) for name, r in described["regions"].items()},
            client_id=f"iotdr-fleet-counter-{self.shard.index}-{os.getpid()}",
            keep=self.identities.__contains__,
        )
        self.counter.start()
        stack.callback(self.counter.stop)
        stack.callback(self.replicator.stop)

    def _apply_api_quotas(self) -> None:
        from simulators.controlplane import ControlPlaneAdmin  # noqa: PLC0415

        admin = ControlPlaneAdmin(self.endpoints()["control_plane_url"])
        for region, quotas in self.scenario.quotas.items():
            if quotas.api_tps:
                admin.set_quotas(region, dict(quotas.api_tps))

    def start_replicator(self) -> None:
        """The owner shard runs the replicator between the first two regions."""
        if self.shard.owner:
            self.replicator.start()

    # -- devices -------------------------------------------------------------------------

    def _fleet_pki(self) -> FleetPKI:
        from simulators._pki import FleetPKI  # noqa: PLC0415

        if self._pki is None:
            self._pki = FleetPKI.load(Path(self.endpoints()["ca"]).parent)
        return self._pki

    def provision(self, names: Sequence[str]) -> list[DeviceEntry]:
        """This shard's devices, registered in every region in bulk; once each door has them."""
        from simulators.controlplane import BulkDevice, ControlPlaneAdmin  # noqa: PLC0415
        from simulators.fleet._provision import issue_identities  # noqa: PLC0415

        described = self.endpoints()
        identities = issue_identities(self._fleet_pki(), names)
        for identity in identities:
            self.identities[identity.name] = identity
        admin = ControlPlaneAdmin(described["control_plane_url"])
        batch = [
            BulkDevice(thing_name=d.name, certificate_pem=d.cert_path.read_text())
            for d in identities
        ]
        for region in self.scenario.regions:
            admin.bulk_register(region, batch)
        self._wait_for_doors({d.certificate_id: d.name for d in identities})
        return [self.entry(name) for name in names]

    def _wait_for_doors(self, wanted: dict[str, str]) -> None:
        """Until each door admits every certificate of ``wanted`` (id -> thing)."""
        from simulators.gateway import GatewayAdmin  # noqa: PLC0415

        deadline = time.monotonic() + _DOOR_WAIT_S
        for name in self.scenario.regions:
            door = GatewayAdmin(self.endpoints()["regions"][name]["gateway_admin_url"])
            while pending := door.pending(wanted):
                if time.monotonic() >= deadline:
                    msg = (
                        f"the door of {name} did not admit {pending} of this shard's "
                        f"{len(wanted)} devices in {_DOOR_WAIT_S:g} s"
                    )
                    raise SimulatorError(msg)
                time.sleep(0.1)

    def entry(self, name: str) -> DeviceEntry:
        """What a device host needs to run ``name``."""
        identity = self.identities[name]
        return {"name": name, "cert": str(identity.cert_path), "key": str(identity.key_path)}

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """New devices in the primary only, through the AWS APIs (registry events follow)."""
        return await asyncio.to_thread(self._register, list(names))

    def _register(self, names: list[str]) -> list[DeviceEntry]:
        from simulators._regions import iot_client, register_device  # noqa: PLC0415
        from simulators.fleet._provision import issue_identities  # noqa: PLC0415

        url = self.endpoints()["control_plane_url"]
        primary = self.scenario.primary
        identities = issue_identities(self._fleet_pki(), names, workers=1)
        iot = iot_client(url, primary)
        for identity in identities:
            self.identities[identity.name] = identity
            register_device(url, primary, identity, iot=iot)
        return [self.entry(name) for name in names]

    # -- the timeline ----------------------------------------------------------------------

    async def apply(self, step: Step) -> str:
        """The owner carries out a region step; every shard returns what the record says."""
        detail = _detail(step)
        if self.shard.owner:
            await asyncio.to_thread(self._carry_out, step)
        return detail

    def _carry_out(self, step: Step) -> None:
        from simulators.controlplane import ControlPlaneAdmin  # noqa: PLC0415
        from simulators.dns._control import set_records  # noqa: PLC0415
        from simulators.gateway import GatewayAdmin  # noqa: PLC0415

        described = self.endpoints()
        control = ControlPlaneAdmin(described["control_plane_url"])
        if isinstance(step, FaultStep):
            if step.mode in _CONTROL_PLANE_MODES:
                control.set_outage(step.region, _CONTROL_PLANE_MODES[step.mode])  # type: ignore[arg-type]
            else:
                GatewayAdmin(described["regions"][step.region]["gateway_admin_url"]).set_fault(
                    step.mode
                )
        elif isinstance(step, HealStep):
            GatewayAdmin(described["regions"][step.region]["gateway_admin_url"]).set_fault("up")
            control.set_outage(step.region, "up")
        elif isinstance(step, DnsStep):
            target = described["regions"][step.cname]["endpoint"]
            set_records(
                _address(described["dns"]),
                described["zone"],
                described["device_name"] + ".",
                "CNAME",
                [target],
            )
        elif isinstance(step, ReplicatorStep):
            if step.action == "stop":
                self.replicator.stop()
            else:
                self.replicator.start()

    # -- measuring -----------------------------------------------------------------------------

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """Each door's counters (over its admin URL) and, in the owner, the replicator's lag."""
        return await asyncio.to_thread(self._sample, t)

    def _sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        from simulators.gateway import GatewayAdmin  # noqa: PLC0415

        doors = []
        for name, region in self.endpoints()["regions"].items():
            try:
                status = GatewayAdmin(region["gateway_admin_url"], timeout_s=1.0).status()
                doors.append(door_sample(t, name, status))
            except Exception:  # noqa: BLE001 - a busy door must not stop the run
                logger.debug("fleet.door_sample_failed", extra={"region": name})
        return doors, self.replicator.lag()

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """This shard's devices' last reported state, read through the iot-data HTTP API."""
        regions = self.endpoints()["regions"]

        def reported(region: str, device: str) -> dict[str, Any]:
            return _reported(regions[region]["data_url"], device)

        return await asyncio.to_thread(check_shadows, self.scenario, final, reported)


def _detail(step: Step) -> str:
    """What a region step's record says (the same in every shard)."""
    if isinstance(step, FaultStep):
        return step.mode
    if isinstance(step, HealStep):
        return "up"
    if isinstance(step, DnsStep):
        return "cname"
    if isinstance(step, ReplicatorStep):
        return step.action
    msg = f"attached regions cannot carry out {step!r}"
    raise SimulatorError(msg)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _reported(data_url: str, device: str) -> dict[str, Any]:
    """A device's reported state in a region's shadow service ({} when it has none)."""
    url = f"{data_url}/things/{urllib.parse.quote(device)}/shadow"
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:  # noqa: S310 - the regions' http URL
            document = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    state: dict[str, Any] = document.get("state", {}).get("reported", {})
    return state
