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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulators._errors import SimulatorError
from simulators.fleet._play import Progress, TimelinePlayer
from simulators.fleet._process_fleet import ProcessFleet, default_processes
from simulators.fleet._records import RunRecord
from simulators.fleet._regions_stage import RegionsStage, local_regions_for
from simulators.fleet._scenario import scenario_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.fleet._scenario import Scenario

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
    """

    scenario: Scenario
    report_dir: Path
    seed: int = 0
    processes: int | None = None
    state_dir: Path | None = None
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    progress: Callable[[Progress], None] | None = None


def run_fleet(options: RunOptions) -> dict[str, Any]:
    """Run the scenario and write the report; returns report.json's content.

    Raises:
        SimulatorError: one clear line for what stopped the run (ports taken,
            a broker missing, a device host that died, an interruption: the
            report is then partial).
    """
    from simulators.fleet._output import write_report  # noqa: PLC0415

    scenario = options.scenario
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
        stage = RegionsStage(scenario, state, broker=options.broker)
        fleet = ProcessFleet(
            scenario,
            state,
            seed=options.seed,
            processes=options.processes,
            endpoints=lambda: stage.running().endpoints(),
        )
        player = TimelinePlayer(scenario, stage, fleet, record, progress=options.progress)
        try:
            stage.start(stack, record)
            asyncio.run(_main(player, stage, fleet, options))
        except KeyboardInterrupt:
            interrupted = "interrupted (Ctrl-C)"
        except _TerminatedError:
            interrupted = "interrupted (SIGTERM)"
        player.finish(interrupted=interrupted)
    report = write_report(record, options.report_dir)
    if interrupted is not None:
        msg = (
            f"{interrupted}: everything the run started was stopped; "
            f"a partial report is in {options.report_dir}"
        )
        raise SimulatorError(msg)
    return report


async def _main(
    player: TimelinePlayer, stage: RegionsStage, fleet: ProcessFleet, options: RunOptions
) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    terminated = False

    def on_term() -> None:
        nonlocal terminated
        terminated = True
        main.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        if options.progress is not None:
            options.progress(Progress(phase="provisioning", duration_s=player.scenario.duration_s))
        devices = await asyncio.to_thread(stage.provision, player.scenario.devices)
        stage.start_replicator()
        await player.run(devices)
    except asyncio.CancelledError:
        if terminated:
            raise _TerminatedError from None
        raise
    finally:
        await fleet.stop()
        loop.remove_signal_handler(signal.SIGTERM)


def _settings(scenario: Scenario, options: RunOptions) -> dict[str, object]:
    return {
        **scenario_settings(scenario),
        "processes": options.processes or default_processes(),
        "broker": options.broker,
    }


class _TerminatedError(Exception):
    """SIGTERM arrived."""
