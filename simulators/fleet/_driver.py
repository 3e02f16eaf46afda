"""The fleet driver: local regions, a provisioned fleet, the replicator, device hosts, a timeline.

:func:`run_fleet` is what ``iotdr sim run`` does, in order:

1. start the local regions of the scenario (the door in front of each
   broker, control plane, shadow services, DNS, health checker) with the
   scenario's quotas;
2. provision the fleet in every region at once (the steady state the
   replicator would have reached; bulk path, no registry events);
3. start the replicator (``iotdr replicator run``, a process of its own)
   unless ``replication: off``, and the cloud-side counter;
4. start the device hosts (one process per core, the devices spread over
   them) and wait until the fleet is connected: that is ``t = 0``;
5. play the timeline, sampling the doors, the replicator and the fleet
   every second;
6. at the end: devices stop publishing and empty their outboxes, the
   counter settles, every shadow is checked; then everything started is
   stopped, by PID, in reverse order (also on Ctrl-C, SIGTERM or failure),
   and the report is written.

Only steps 4-6 are timed; the records they produce
(:class:`~simulators.fleet._records.RunRecord`) are all the report reads.

The stage of step 1 is one of three: the local regions the run starts
(:class:`~simulators.fleet._regions_stage.RegionsStage`), local regions
already running (``regions``: :class:`~simulators.fleet._attached_stage.AttachedStage`,
for shards that share them), or a real AWS account (``target="aws"``:
:class:`~simulators.fleet._aws_stage.AwsStage`). A shard (``shard``) runs
its contiguous share of the fleet and starts its timeline at the wall-clock
``start_at`` that every shard was given (:mod:`simulators.fleet._shard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulators._errors import SimulatorError
from simulators.fleet._play import Progress, StopRequestedError, TimelinePlayer
from simulators.fleet._process_fleet import ProcessFleet, default_processes
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import RunRecord
from simulators.fleet._regions_stage import RegionsStage, local_regions_for, region_scale
from simulators.fleet._scenario import scenario_settings
from simulators.fleet._shard import Shard, ShardPlayer, share

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.fleet._attached_stage import AttachedStage
    from simulators.fleet._aws_stage import AwsStage
    from simulators.fleet._aws_target import AwsTarget
    from simulators.fleet._scenario import Scenario

    AnyStage = RegionsStage | AttachedStage | AwsStage

__all__ = ["Progress", "RunOptions", "local_regions_for", "run_fleet"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a scenario.

    Attributes:
        scenario: what to play.
        report_dir: where the report goes.
        seed: the fleet's randomness.
        processes: device-host processes (default: one per core).
        state_dir: keys, outboxes, logs (default: a temporary directory, removed after).
        broker: ``auto`` (mosquitto when installed), ``mosquitto`` or ``amqtt``.
        progress: called about once a second with the run's state.
        shard: run this shard of the fleet (None: the whole fleet).
        regions: the state directory of running local regions to attach to
            (``iotdr sim regions up``) instead of starting them.
        start_at: the wall-clock ``t = 0`` (seconds since the epoch) every shard agrees on.
        aws: run against AWS IoT there (``--target aws``) instead of local regions.
        door_processes: processes per region's door (None: by the fleet's size,
            :func:`~simulators.fleet._regions_stage.region_scale`).
        broker_shards: brokers per region (None: by the fleet's size).
    """

    scenario: Scenario
    report_dir: Path
    seed: int = 0
    processes: int | None = None
    state_dir: Path | None = None
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    progress: Callable[[Progress], None] | None = None
    shard: Shard | None = None
    regions: Path | None = None
    start_at: float | None = None
    aws: AwsTarget | None = None
    door_processes: int | None = None
    broker_shards: int | None = None

    def __post_init__(self) -> None:
        if self.aws is not None and self.regions is not None:
            msg = "--target aws and --regions exclude each other: AWS has no local regions"
            raise SimulatorError(msg)
        if self.shard is not None and self.shard.count > 1:
            if self.regions is None and self.aws is None:
                msg = (
                    f"--shard {self.shard} shares regions with the other shards: give "
                    "--regions STATE_DIR (of `iotdr sim regions up`) or --target aws"
                )
                raise SimulatorError(msg)
            if self.start_at is None:
                msg = (
                    f"--shard {self.shard} needs --start-at EPOCH, the t = 0 every shard agrees on"
                )
                raise SimulatorError(msg)


def run_fleet(options: RunOptions) -> dict[str, Any]:
    """Run the scenario and write the report; returns report.json's content.

    Raises:
        SimulatorError: one clear line for what stopped the run (ports taken,
            a broker missing, a device host that died, an interruption: the
            report is then partial).
    """
    from simulators.fleet._output import write_report  # noqa: PLC0415

    scenario = options.scenario
    shard = options.shard or Shard(index=0, count=1)
    record = RunRecord(
        scenario=scenario.name,
        description=scenario.description,
        seed=options.seed,
        regions=tuple(scenario.regions),
        settings=_settings(scenario, options),
    )
    interrupted: str | None = None
    with contextlib.ExitStack() as stack:
        state = options.state_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="iotdr-fleet-"))
        )
        state.mkdir(parents=True, exist_ok=True)
        stage = _stage(options, state, shard, record)
        fleet = ProcessFleet(
            scenario,
            state,
            seed=options.seed,
            processes=options.processes,
            endpoints=stage.endpoints,
        )
        player = (
            TimelinePlayer(scenario, stage, fleet, record, progress=options.progress)
            if options.shard is None and options.start_at is None
            else ShardPlayer(
                scenario,
                stage,
                fleet,
                record,
                shard=shard,
                start_at=options.start_at,
                progress=options.progress,
            )
        )
        try:
            stage.start(stack, record)
            names = _fleet_names(stage, scenario.devices, shard)
            asyncio.run(_main(player, stage, fleet, names, options))
        except KeyboardInterrupt:  # before the loop's own handler was in place
            interrupted = "interrupted (Ctrl-C)"
        except StopRequestedError as exc:
            interrupted = str(exc)
        doors = list(record.doors)
        player.finish(interrupted=interrupted)
        # finish() rebuilds each door sample from its first five fields; keep them whole.
        t0 = player.t0 if player.t0 is not None else 0.0
        record.doors = [dataclasses.replace(d, t=round(d.t - t0, 3)) for d in doors]
    report = write_report(record, options.report_dir)
    if interrupted is not None:
        msg = (
            f"{interrupted}: everything the run started was stopped; "
            f"a partial report is in {options.report_dir}"
        )
        raise SimulatorError(msg)
    return report


def _stage(options: RunOptions, state: Path, shard: Shard, record: RunRecord) -> AnyStage:
    """The regions' side the options ask for (the AWS plan is checked here, before any start)."""
    scenario = options.scenario
    if options.aws is not None:
        from simulators.fleet._aws_stage import AwsStage, aws_clients  # noqa: PLC0415
        from simulators.fleet._aws_target import check_aws_plan, load_identities  # noqa: PLC0415

        record.notes.extend(check_aws_plan(scenario, options.aws))
        identities = load_identities(options.aws.identities)
        return AwsStage(
            scenario, options.aws, identities, shard=shard, clients=aws_clients(options.aws)
        )
    if options.regions is not None:
        from simulators.fleet._attached_stage import AttachedStage  # noqa: PLC0415

        return AttachedStage(scenario, state, options.regions, shard=shard)
    doors, brokers = region_scale(
        scenario.devices, door_processes=options.door_processes, broker_shards=options.broker_shards
    )
    record.settings["door_processes"] = doors
    record.settings["broker_shards"] = brokers
    return RegionsStage(
        scenario, state, broker=options.broker, door_processes=doors, broker_shards=brokers
    )


def _fleet_names(stage: AnyStage, devices: int, shard: Shard) -> list[str]:
    """This shard's contiguous share of the fleet's names (all of them unsharded)."""
    from simulators.fleet._aws_stage import AwsStage  # noqa: PLC0415

    names = (
        stage.fleet_names(devices) if isinstance(stage, AwsStage) else fleet_device_names(devices)
    )
    return [names[i] for i in share(len(names), shard)]


async def _main(
    player: TimelinePlayer,
    stage: AnyStage,
    fleet: ProcessFleet,
    names: list[str],
    options: RunOptions,
) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "interrupted (SIGTERM)"}

    def on_signal(reason: str) -> None:
        # The first signal stops the run: the main task is cancelled and the player
        # told, so the run stops at its next tick even where a cancel gets lost.
        if player.stopping is None:
            player.stopping = reason
            main.cancel()

    for signum, reason in signals.items():
        loop.add_signal_handler(signum, on_signal, reason)
    try:
        if options.progress is not None:
            options.progress(Progress(phase="provisioning", duration_s=player.scenario.duration_s))
        devices = await asyncio.to_thread(stage.provision, names)
        stage.start_replicator()
        await player.run(devices)
    except asyncio.CancelledError:
        if player.stopping is not None:
            raise StopRequestedError(player.stopping) from None
        raise
    finally:
        await fleet.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)


def _settings(scenario: Scenario, options: RunOptions) -> dict[str, object]:
    settings: dict[str, object] = {
        **scenario_settings(scenario),
        "processes": options.processes or default_processes(),
        "broker": options.broker,
        "target": "aws" if options.aws is not None else "local",
    }
    if options.shard is not None:
        settings["shard"] = options.shard.as_dict()
        settings["fleet_devices"] = scenario.devices
    if options.start_at is not None:
        settings["start_at"] = options.start_at
    return settings
