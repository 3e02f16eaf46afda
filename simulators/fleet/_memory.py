"""The fleet simulator's world in memory: every scenario on virtual time, no socket, no thread.

:func:`run_memory_scenario` plays a scenario with :class:`~simulators.fleet._play.TimelinePlayer`
on a :class:`~device_agent.testing.VirtualTimeLoop`, with a :class:`MemoryStage`
(the regions) and a :class:`MemoryFleet` (the devices). What is real and what
is modelled:

Real (the project's own code, unchanged):
    * every device: :class:`~simulators.fleet._device.VirtualDevice` around the
      real :class:`~device_agent.FailoverClient` (machine, timers, outbox
      protocol, shadow fetches), its configuration built as the device host
      builds it, the scenario's agent overrides applied;
    * the door's decision: :func:`simulators.gateway.decide` with the
      gateway's :class:`~simulators.gateway.ConnectQuotas` token buckets (the
      scenario's CONNECT quotas, AWS's defaults otherwise) on the loop's clock,
      a :class:`~simulators.gateway.RegistryView` of the region's registry,
      real X.509 certificates (one fleet CA, one certificate per device: the
      certificate id is the SHA-256 of its DER), refusals counted under the
      gateway's reason names;
    * the registries: :class:`~replicator._memory.InMemoryRegion` per region;
    * the replicator: one :class:`~replicator._engine.Engine` both ways on the
      forward and the failback queue (as ``--failback auto`` runs it) of one
      :class:`~replicator._journal.Journal` file, run every half second on the
      loop; in ``jitr`` mode the real :class:`~replicator._jitr.JitrHandler`
      activates what the door registered PENDING_ACTIVATION;
    * shadows: :class:`~simulators.shadows.ShadowStore` per region answering
      ``$aws/things/<thing>/shadow/...`` through the MQTT bridge's pure
      :func:`~simulators.shadows._mqtt.responses`;
    * DNS failover: the health checker's :class:`~simulators._healthcheck.HealthTracker`.

Modelled:
    * the network and its fault modes: :class:`~device_agent.testing.MemoryNetwork`
      (``down``, ``blackhole``, ``partial``; ``degraded`` is the door's share
      of "server unavailable" CONNACKs, without its latency);
    * device-side faults: the same :class:`~simulators.fleet._device_faults.DeviceFaults`
      wrappers as a device host's, around the network's transports and probers;
    * the registry events and the shadow feeds: the stage journals what the
      real feeds would (a thing and its certificate created in the primary, a
      device's accepted shadow update, in the direction of its region); the
      replicator's own writes publish nothing, as its origin token makes the
      real feeds ignore them;
    * the health checker's probe: :meth:`MemoryNetwork.healthy` (``partial``
      looks healthy, as to the real checker), every 10 s, Route 53's threshold of 3;
    * the control plane's faults: the primary's registry calls raise
      :class:`~replicator.RegionUnavailableError` (shadows, the data plane,
      stay up); API rate quotas are not modelled;
    * the door's view of the registry is read at each CONNECT (the real door
      follows the control plane's feed within a poll).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent import AgentConfig, DiscoveryConfig, IdentityConfig
from device_agent.testing import (
    LoopClock,
    MemoryDiscovery,
    MemoryNetwork,
    MemoryOutbox,
    MemoryProber,
    MemoryTransport,
    run_virtual,
)
from replicator._errors import (
    ReplicatorError,
)
from replicator.core._jitr_plan import CaCertificate
from replicator.core._ops import (
    AttachPolicy,
    AttachThingPrincipal,
    CreatePolicy,
    CreateThing,
    RegisterCertificateWithoutCA,
)
from replicator.runtime._quotas import DEFAULT_TPS
from simulators._errors import SimulatorError
from simulators._healthcheck import HealthCheckConfig, HealthTracker
from simulators._memory_region import InMemoryRegion
from simulators.controlplane._bulk import DEVICE_POLICY_NAME, device_policy
from simulators.fleet._device import (
    DeviceBehaviour,
    VirtualDevice,
    quiet_devices,
    telemetry_topic,
)
from simulators.fleet._device_faults import DeviceFaults
from simulators.fleet._play import FleetFinal, TimelinePlayer
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import Arrival, DeviceEvent, DoorSample, RunRecord, ShadowCheck
from simulators.fleet._report import build_report
from simulators.fleet._scenario import (
    CreateDevicesStep,
    DnsStep,
    FaultStep,
    HealStep,
    ReplicatorStep,
    apply_agent_overrides,
    resolved_agent,
    scenario_settings,
)
from simulators.gateway import (
    ConnectQuotas,
    GatewayFault,
    GatewayFaultMode,
)
from simulators.shadows import ShadowStore
from simulators.shadows._mqtt import responses

if TYPE_CHECKING:
    from collections.abc import Sequence

    from device_agent._transport import ConnectParams, TransportCallbacks
    from device_agent.testing import PublishedMessage
    from replicator.core._ops import Op
    from simulators.fleet._play import DeviceEntry
    from simulators.fleet._scenario import DeviceFaultMode, Scenario, Step

from simulators.fleet._memory_world import (
    DEVICE_NAME,
    FleetIdentities,
    MemoryDoor,
    MemoryRegionApi,
    MemoryReplicator,
)

__all__ = [
    "FleetIdentities",
    "MemoryDoor",
    "MemoryFleet",
    "MemoryRegionApi",
    "MemoryReplicator",
    "MemoryRun",
    "MemoryStage",
    "run_memory_scenario",
]


_REPLICATOR_TICK_S = 0.5
_SETTLE_QUIET_S = 2.0
_SETTLE_LIMIT_S = 30.0
_SHADOW_SETTLE_S = 30.0


# -- the stage ------------------------------------------------------------------------------------


class MemoryStage:
    """The regions in memory as a run's :class:`~simulators.fleet._play.Stage`.

    Build it inside the running (virtual-time) loop, then :meth:`start` it.

    Args:
        scenario: the scenario (regions, replication, quotas).
        seed: the door's and the replicator's randomness.
        latency_s: every region's one-way latency.
        folder: where the replicator's journal goes.
    """

    def __init__(
        self, scenario: Scenario, *, seed: int = 0, latency_s: float = 0.02, folder: Path
    ) -> None:
        self.scenario = scenario
        regions = list(scenario.regions)
        self.primary, self.secondary = regions[0], regions[1]
        self.clock = LoopClock()
        self.identities = FleetIdentities()
        self.apis = {
            name: MemoryRegionApi(
                InMemoryRegion(name, clock=self.clock.time), ShadowStore(clock=self.clock.time)
            )
            for name in regions
        }
        if scenario.replication == "jitr":
            # Certificates reach the secondary by JITR: its CA is registered there.
            ca = CaCertificate(self.identities.ca_id, "ACTIVE", auto_registration=True)
            self.apis[self.secondary].cas[ca.certificate_id] = ca
        rng = random.Random(f"memory-stage:{seed}")  # noqa: S311 - simulation
        quotas = {}
        for name in regions:
            limits = scenario.quotas.get(name)
            quotas[name] = ConnectQuotas(
                account_rate=(limits.connect_per_s if limits and limits.connect_per_s else 500.0),
                client_id_rate=(
                    limits.connect_per_client_id_per_s
                    if limits and limits.connect_per_client_id_per_s
                    else 1.0
                ),
            )
        self.door = MemoryDoor(self.apis, self.identities, quotas, rng)
        self.network = MemoryNetwork(regions, latency_s=latency_s, admit=self.door.admit)
        self.dns = MemoryDiscovery(
            self.network, name=DEVICE_NAME, primary=self.primary, secondary=self.secondary
        )
        self.health = HealthTracker(HealthCheckConfig(), self.primary, self.secondary)
        self.replicator: MemoryReplicator | None = None
        if scenario.replication != "off":
            self.replicator = MemoryReplicator(
                self.apis[self.primary],
                self.apis[self.secondary],
                mode=scenario.replication,
                folder=folder,
                clock=self.clock,
                rng=rng,
            )
            self.door.on_jitr = self.replicator.jitr_registered
        self.arrivals: list[Arrival] = []
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the network never reads it
        self._tasks: list[asyncio.Task[None]] = []
        self._api_free: dict[str, float] = {}
        self.network.add_tap(self._tap)

    def __repr__(self) -> str:
        return f"MemoryStage({self.scenario.name!r}, {self.network!r}, cname={self.dns.cname})"

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the health checker and the replicator on the running loop."""
        self._tasks.append(asyncio.create_task(self._health_checker()))
        if self.replicator is not None:
            self._tasks.append(asyncio.create_task(self._replicate()))

    async def close(self) -> None:
        """Stop the loops and close the journal."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.replicator is not None:
            self.replicator.close()

    async def _health_checker(self) -> None:
        interval = self.health.config.interval_s
        while True:
            now = self.clock.monotonic()
            for region in (self.primary, self.secondary):
                self.health.record(region, self.network.healthy(region), now)
            before = self.health.serving
            after = self.health.choose()
            if after != before:  # as the real checker: it writes the CNAME on a change only
                self.dns.cname = after
            await asyncio.sleep(interval)

    async def _replicate(self) -> None:
        assert self.replicator is not None
        while True:
            await asyncio.sleep(_REPLICATOR_TICK_S)
            try:
                self.replicator.tick()
            except ReplicatorError as exc:  # the real service would stop and say why
                raise SimulatorError(f"the replicator stopped: {exc}") from exc

    def check(self) -> None:
        """Raise the error of a loop that died (the replicator), if any."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise SimulatorError(str(task.exception()))

    def transport_factory(
        self, params: ConnectParams, callbacks: TransportCallbacks
    ) -> MemoryTransport:
        """The devices' transports: the network's, the door counting what a fault holds."""
        return _DoorTransport(self, params, callbacks)

    # -- provisioning -----------------------------------------------------------------------------

    def provision(self, count: int) -> list[DeviceEntry]:
        """The fleet's steady state: ``count`` devices registered in every region."""
        names = fleet_device_names(count)
        for api in self.apis.values():
            self._device_policy(api.registry)
        for name in names:
            cert_id = self.identities.issue(name)
            for api in self.apis.values():
                for op in self._registration(name, cert_id):
                    api.registry.execute(op)
        return [{"name": name} for name in names]

    @staticmethod
    def _device_policy(registry: InMemoryRegion) -> None:
        """Create the region's default device policy (its ARNs name the region) if missing."""
        if registry.read_policy(DEVICE_POLICY_NAME, targets=False) is None:
            assert registry.account_id is not None
            policy = device_policy(registry.region, registry.account_id)
            registry.execute(CreatePolicy(policy.name, policy.document))

    def _registration(self, name: str, cert_id: str) -> list[Op]:
        """A device as bulk registration makes it: certificate, policy attached, thing."""
        pem = self.identities.pems[name]
        return [
            RegisterCertificateWithoutCA(cert_id, pem, "ACTIVE"),
            AttachPolicy(DEVICE_POLICY_NAME, cert_id),
            CreateThing(name),
            AttachThingPrincipal(name, cert_id),
        ]

    # -- the Stage port ---------------------------------------------------------------------------

    async def apply(self, step: Step) -> str:
        """Carry out a fault, heal, DNS or replicator step."""
        if isinstance(step, FaultStep):
            if step.mode.startswith("control-plane"):
                self.apis[step.region].control_plane = step.mode
            elif step.mode == "degraded":
                self.door.faults[step.region] = GatewayFault(mode=GatewayFaultMode.DEGRADED)
            else:
                self.network.set_mode(step.region, step.mode)  # type: ignore[arg-type]
            return step.mode
        if isinstance(step, HealStep):
            self.network.heal(step.region)
            self.door.faults[step.region] = GatewayFault()
            if self.apis[step.region].control_plane != "up" and self.replicator is not None:
                # What the service's AutoFailback does when a region answers again
                # (within its probe interval): changes backing off are due at once.
                self.replicator.wake()
            self.apis[step.region].control_plane = "up"
            return "up"
        if isinstance(step, DnsStep):
            self.dns.cname = step.cname
            return "cname"
        if isinstance(step, ReplicatorStep):
            if self.replicator is not None:
                self.replicator.running = step.action == "start"
            return step.action
        assert isinstance(step, CreateDevicesStep)  # the player registers them itself
        return str(step.count)

    async def register_devices(self, names: Sequence[str]) -> list[DeviceEntry]:
        """Register new devices in the primary only, through its APIs (they may be down).

        Each call waits for its API's quota (the scenario's, else AWS's default
        TPS), as the real client waits out throttling: 50 devices take 5 s at
        RegisterCertificateWithoutCA's 10/s.
        """
        api = self.apis[self.primary]
        self._device_policy(api.registry)
        for name in names:
            cert_id = self.identities.issue(name)
            try:
                for op in self._registration(name, cert_id):
                    await self._paced(op.api)
                    api.execute(op)
            except ReplicatorError as exc:
                msg = f"registering {name} in {self.primary} failed: {exc}"
                raise SimulatorError(msg) from exc
            if self.replicator is not None:
                self.replicator.thing_created(name, cert_id)
        return [{"name": name} for name in names]

    async def _paced(self, api_name: str) -> None:
        """Wait for a token of ``api_name``'s quota in the primary (one call per 1/TPS s)."""
        limits = self.scenario.quotas.get(self.primary)
        tps = (limits.api_tps.get(api_name) if limits else None) or DEFAULT_TPS.get(api_name)
        if not tps:
            return
        now = self.clock.monotonic()
        due = max(now, self._api_free.get(api_name, now))
        self._api_free[api_name] = due + 1.0 / tps
        if due > now:
            await asyncio.sleep(due - now)

    async def sample(self, t: float) -> tuple[list[DoorSample], float | None]:
        """The doors and the replicator's lag."""
        self.check()
        doors = [
            DoorSample(
                t,
                name,
                len(self.network.connected(name)),
                self.door.admitted[name],
                dict(self.door.refused[name]),
                handshakes=self.network.region(name).stats.handshakes,
            )
            for name in self.scenario.regions
        ]
        lag = self.replicator.lag_s() if self.replicator is not None else None
        return doors, lag

    def delivered(self) -> int:
        """Telemetry arrivals so far."""
        return len(self.arrivals)

    async def settle(self) -> list[Arrival]:
        """Wait (bounded) until no arrival came for a while; every arrival."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_LIMIT_S
        seen = -1
        while loop.time() < deadline and seen != len(self.arrivals):
            seen = len(self.arrivals)
            await asyncio.sleep(_SETTLE_QUIET_S)
        return list(self.arrivals)

    async def check_shadows(self, final: FleetFinal) -> ShadowCheck:
        """Each device's last reported state in its region (in every region when replicated)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SHADOW_SETTLE_S
        while True:
            diverged = [
                device
                for device, state in final.reported.items()
                if state.get("seq", 0) and not self._shadow_holds(device, state, final)
            ]
            checked = sum(1 for s in final.reported.values() if s.get("seq", 0))
            if not diverged or loop.time() >= deadline:
                return ShadowCheck(checked, len(diverged), tuple(sorted(diverged)[:200]))
            await asyncio.sleep(1.0)

    def _shadow_holds(self, device: str, state: dict[str, Any], final: FleetFinal) -> bool:
        if self.scenario.replication != "off":
            regions = list(self.scenario.regions)
        else:
            regions = [final.region.get(device) or self.primary]
        for region in regions:
            document = self.apis[region].shadows.get(device).document or {}
            have = document.get("state", {}).get("reported", {})
            if any(have.get(k) != v for k, v in state.items()):
                return False
        return True

    # -- the cloud side ---------------------------------------------------------------------------

    def _tap(self, message: PublishedMessage) -> None:
        """Count telemetry arrivals; serve shadow requests as the MQTT bridge does."""
        topic = message.topic
        if topic == telemetry_topic(message.client_id):
            seq = json.loads(message.payload)["seq"]
            self.arrivals.append(Arrival(message.at, message.region, message.client_id, seq))
        elif topic.startswith("$aws/things/"):
            store = self.apis[message.region].shadows
            for answer in responses(store, topic, message.payload):
                self.network.publish(message.region, answer.topic, answer.payload, 1)
                if answer.topic.endswith("/update/documents") and self.replicator is not None:
                    current = json.loads(answer.payload)["current"]
                    thing = topic.split("/")[2]
                    self.replicator.shadow_changed(message.region, thing, current["version"])


class _DoorTransport(MemoryTransport):
    """A device connection that the door counts when a fault holds it (as the gateway does).

    The real gateway accepts a connection into a ``blackhole`` or ``partial``
    door and counts it (``fault_blackhole``, ``fault_partial``) before holding
    it silent; ``down`` closes its listener, so nothing is counted there.
    """

    def __init__(
        self, stage: MemoryStage, params: ConnectParams, callbacks: TransportCallbacks
    ) -> None:
        super().__init__(stage.network, params, callbacks)
        self._stage = stage

    async def connect(self) -> bool:
        region = self.network.route(self.params.endpoint, self.params.address)
        if region is not None and region.mode in ("blackhole", "partial"):
            self._stage.door.refused[region.name][f"fault_{region.mode}"] += 1
        return await super().connect()


# -- the fleet ------------------------------------------------------------------------------------


class MemoryFleet:
    """The devices of a memory run, in the loop itself: a :class:`~simulators.fleet._play.Fleet`.

    Args:
        stage: the regions they connect to.
        scenario: their pace and the agent's overrides.
        seed: each device's randomness is derived from it and its name.
    """

    def __init__(self, stage: MemoryStage, scenario: Scenario, *, seed: int = 0) -> None:
        self.stage = stage
        self.scenario = scenario
        self.seed = seed
        self.devices: dict[str, VirtualDevice] = {}
        self.faults = DeviceFaults(seed=seed)
        self._behaviour = DeviceBehaviour(
            telemetry_interval_s=scenario.fleet.telemetry_interval_s,
            shadow_interval_s=scenario.fleet.shadow_interval_s,
        )
        self._events: list[DeviceEvent] = []
        self._starts: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"MemoryFleet(devices={len(self.devices)}, sent={self.sent()})"

    def agent_config(self, name: str) -> AgentConfig:
        """A device's agent configuration, as the device host builds it (overrides applied)."""
        unused = Path("/nonexistent")
        base = AgentConfig(
            identity=IdentityConfig(
                client_id=name, cert_path=unused, key_path=unused, ca_path=unused
            ),
            discovery=DiscoveryConfig(name=DEVICE_NAME, endpoints=self.stage.network.endpoints),
        )
        return apply_agent_overrides(base, resolved_agent(self.scenario))

    def _sink(self, device: str, kind: str, region: str | None, detail: str) -> None:
        now = asyncio.get_running_loop().time()
        self._events.append(DeviceEvent(now, device, kind, region, detail))  # type: ignore[arg-type]

    def _device(self, name: str) -> VirtualDevice:
        config = self.agent_config(name)
        stage = self.stage
        clock = stage.clock
        return VirtualDevice(
            config,
            behaviour=self._behaviour,
            rng=random.Random(f"{self.seed}:{name}"),  # noqa: S311 - simulation
            sink=self._sink,
            transport_factory=self.faults.transport_factory(stage.transport_factory),
            clock=clock,
            prober=self.faults.prober(
                MemoryProber(
                    stage.network,
                    client_id=name,
                    topic=config.probe.topic.replace("{client_id}", name),
                    timeout_s=config.probe.timeout_s,
                ),
                device=name,
                timeout_s=config.probe.timeout_s,
            ),
            discovery=stage.dns,
            outbox=MemoryOutbox(capacity=config.outbox.capacity, clock=clock.time),
            ssl_context=stage.ssl_context,
        )

    async def _start(self, device: VirtualDevice, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await device.start()

    def _add(self, devices: Sequence[DeviceEntry], *, spread_s: float, created: bool) -> None:
        for entry in devices:
            name = entry["name"]
            if name in self.devices:
                continue
            device = self._device(name)
            self.devices[name] = device
            if created:
                self._sink(name, "created", None, "")
            delay = random.Random(f"{self.seed}:{name}:start").uniform(0, spread_s)  # noqa: S311
            self._starts.append(asyncio.create_task(self._start(device, delay)))

    async def start(self, devices: Sequence[DeviceEntry]) -> None:
        """Start the fleet, spread over the scenario's ``start_spread_s``."""
        self._add(devices, spread_s=self.scenario.fleet.start_spread_s, created=False)

    async def add(self, devices: Sequence[DeviceEntry]) -> None:
        """Start devices created during the run, at once."""
        self._add(devices, spread_s=0.0, created=True)

    def take_events(self) -> list[DeviceEvent]:
        """Device events since the last call."""
        events, self._events = self._events, []
        return events

    def sent(self) -> int:
        """Telemetry messages published so far."""
        return sum(d.sent for d in self.devices.values())

    def check(self) -> None:
        """Raise SimulatorError if a device failed to start, or a loop of the stage died."""
        running = []
        for task in self._starts:
            if not task.done():
                running.append(task)
            elif not task.cancelled() and task.exception() is not None:
                raise SimulatorError(f"a device failed to start: {task.exception()}")
        self._starts = running
        self.stage.check()

    async def set_device_fault(
        self, region: str, mode: DeviceFaultMode, fraction: float = 1.0
    ) -> None:
        """Fail the way to ``region`` of ``fraction`` of the devices (the door untouched)."""
        self.faults.set(region, mode, fraction)

    async def clear_device_fault(self, region: str) -> None:
        """Clear the device-side fault of ``region``."""
        self.faults.clear(region)

    async def quiet(self) -> FleetFinal:
        """Stop publishing, let the outboxes empty (bounded), say where everyone is."""
        await asyncio.gather(*self._starts, return_exceptions=True)
        return await quiet_devices(self.devices)

    async def close(self) -> None:
        """Close every device."""
        for task in self._starts:
            task.cancel()
        await asyncio.gather(*self._starts, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in self.devices.values()), return_exceptions=True)


# -- a whole run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryRun:
    """What a memory run leaves to read after it: the world, the devices, the cloud side.

    Attributes:
        stage: the regions (network and its connection log, registries,
            shadows, door counters, the cloud side's arrivals on the loop's clock).
        fleet: the devices (closed).
        t0: the loop time of the timeline's ``t = 0`` (records are relative to it).
        connected_at_end: per region, the client IDs the network held connected
            when the run ended (after the drain, before the devices closed).
    """

    stage: MemoryStage
    fleet: MemoryFleet
    t0: float
    connected_at_end: dict[str, frozenset[str]]

    @property
    def network(self) -> MemoryNetwork:
        """The in-memory network."""
        return self.stage.network


def run_memory_scenario(
    scenario: Scenario, *, seed: int = 0, latency_s: float = 0.02
) -> tuple[RunRecord, dict[str, Any], MemoryRun]:
    """Play ``scenario`` in memory on virtual time; its record, its report and the world.

    Args:
        scenario: what to play (``with_devices`` sets the fleet's size).
        seed: the devices', the door's and the replicator's randomness.
        latency_s: every region's one-way latency.

    Returns:
        The run's record, :func:`~simulators.fleet._report.build_report` of it,
        and the :class:`MemoryRun` to check them against.
    """
    record = RunRecord(
        scenario=scenario.name,
        description=scenario.description,
        seed=seed,
        regions=tuple(scenario.regions),
        settings={"world": "memory", **scenario_settings(scenario)},
    )

    async def main(folder: Path) -> MemoryRun:
        stage = MemoryStage(scenario, seed=seed, latency_s=latency_s, folder=folder)
        fleet = MemoryFleet(stage, scenario, seed=seed)
        player = TimelinePlayer(scenario, stage, fleet, record)
        stage.start()
        try:
            await player.run(stage.provision(scenario.devices))
            connected = {r: frozenset(stage.network.connected(r)) for r in scenario.regions}
            player.finish()
        finally:
            await fleet.close()
            await stage.close()
        return MemoryRun(stage, fleet, player.t0 or 0.0, connected)

    with tempfile.TemporaryDirectory(prefix="iotdr-memory-") as folder:
        run = run_virtual(main(Path(folder)))
    return record, build_report(record), run
