"""Shards: one fleet run split over processes or machines that share one set of regions.

``iotdr sim run --shard I/N`` runs shard I of N. The arithmetic is pure:

* the fleet's D devices are numbered 1..D (``sim-00001``...); shard I takes the
  contiguous positions ``[D*I//N, D*(I+1)//N)`` of that list (:func:`share`), so
  every device is in exactly one shard and the names are those one run of D
  devices would have had: globally unique, and each device's randomness
  (seeded from the fleet's seed and its name) is the same as in one run;
* devices a ``create_devices`` step creates continue the numbering (D+1...),
  and each shard creates its contiguous share of each step's count;
* region steps (door and control-plane faults, heals, DNS, the replicator)
  have one owner, shard 0; the other shards record them at their planned
  time without carrying them out, so every shard's report knows the
  disruption (the merge takes the owner's times).

The shards agree on ``t = 0`` by the wall clock (``--start-at EPOCH``):
:class:`ShardPlayer` waits, once its devices are connected, until that
instant before it starts the timeline, and records where its ``t = 0``
fell (``settings["t0_wall"]``): a shard that was late starts at once, and
the merge shifts its records onto the common timeline. Machines must keep
their clocks in step (NTP: a few milliseconds, against timelines in seconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._play import TimelinePlayer
from simulators.fleet._provision import fleet_device_names
from simulators.fleet._records import StepRecord
from simulators.fleet._scenario import CreateDevicesStep

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.fleet._play import Fleet, Progress, Stage
    from simulators.fleet._records import RunRecord
    from simulators.fleet._scenario import Scenario, Step

__all__ = ["Shard", "ShardPlayer", "parse_shard", "shard_names", "share"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based; shard 0 owns the region steps).

    Raises:
        SimulatorError: ``count`` under 1, or ``index`` not in ``[0, count)``.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            msg = f"shard {self.index}/{self.count}: give I/N with 0 <= I < N, e.g. 0/4"
            raise SimulatorError(msg)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def owner(self) -> bool:
        """Whether this shard carries out the region steps (shard 0)."""
        return self.index == 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready, as the record's ``settings["shard"]`` holds it."""
        return {"index": self.index, "count": self.count}


def parse_shard(text: str) -> Shard:
    """``I/N`` (``--shard``) as a :class:`Shard`.

    Raises:
        SimulatorError: not ``I/N`` with ``0 <= I < N``.
    """
    match = _SHARD.match(text)
    if match is None:
        msg = f"--shard {text!r} is not I/N (shard I of N, from 0), e.g. 0/4"
        raise SimulatorError(msg)
    return Shard(index=int(match[1]), count=int(match[2]))


def share(total: int, shard: Shard) -> range:
    """The 0-based positions of ``total`` items that ``shard`` takes: a contiguous share.

    Shares differ in size by at most one, and together they are ``range(total)``.
    """
    return range(total * shard.index // shard.count, total * (shard.index + 1) // shard.count)


def shard_names(total: int, shard: Shard, *, start: int = 1) -> list[str]:
    """The names of ``shard``'s share of ``total`` devices numbered from ``start``."""
    names = fleet_device_names(total, start=start)
    return [names[i] for i in share(total, shard)]


class ShardPlayer(TimelinePlayer):
    """A :class:`TimelinePlayer` for one shard: a wall-clock ``t = 0``, a share of created devices.

    Args:
        scenario: the fleet's scenario (``devices`` is the whole fleet's size).
        stage: the regions (which carry out region steps only in the owner shard).
        fleet: this shard's devices.
        record: filled as the run goes.
        shard: which shard this is.
        start_at: the wall-clock instant (seconds since the epoch) of ``t = 0``;
            None starts once this shard's devices are connected.
        progress: called about once a second.
        wall: the wall clock (``time.time``; a fake in tests).
    """

    def __init__(
        self,
        scenario: Scenario,
        stage: Stage,
        fleet: Fleet,
        record: RunRecord,
        *,
        shard: Shard,
        start_at: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        wall: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        super().__init__(scenario, stage, fleet, record, progress=progress, **options)
        self.shard = shard
        self.start_at = start_at
        self._wall = wall
        self._next_global = scenario.devices + 1

    def __repr__(self) -> str:
        return f"ShardPlayer({self.scenario.name!r}, shard {self.shard}, {self.phase})"

    async def _boot(self) -> None:
        await super()._boot()
        if self.start_at is None:
            return
        delay = self.start_at - self._wall()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            self.record.notes.append(
                f"shard {self.shard}: the devices were connected {-delay:.1f} s after "
                "--start-at, so this shard's timeline started late; give the shards more time"
            )
        # The timeline starts now (run() takes t = 0 as this returns): where that fell on
        # the wall clock lets the merge put a late shard back on the common timeline.
        self.record.settings["t0_wall"] = round(self._wall(), 3)

    async def _apply(self, step: Step) -> None:
        if not isinstance(step, CreateDevicesStep):
            before = len(self.record.steps)
            await super()._apply(step)
            if not self.shard.owner and len(self.record.steps) > before:
                # The owner carries the step out at its planned time (to a loop tick);
                # recorded here at that time, never after what it caused in these devices.
                last = self.record.steps[-1]
                self.record.steps[-1] = dataclasses.replace(last, t=round(step.at, 3))
            return
        t = round(self.now(), 3)
        names = shard_names(step.count, self.shard, start=self._next_global)
        self._next_global += step.count
        self.last_step = f"t={t:.0f}s create_devices {len(names)}"
        if not names:  # this shard's share is empty; the merge still lines the steps up
            self.record.steps.append(StepRecord(t, "create_devices", self.scenario.primary, "0"))
            return
        task = asyncio.create_task(self._create(t, names))
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
