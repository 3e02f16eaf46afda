"""The engine: journal in, reads of both regions, pure plans, writes within quotas, journal out.

Theory of operation. The journal holds one pending row per changed object.
The engine claims due rows, and for each object reads its state in the source
and the target region, asks the planner (``_plan*.py``, pure) for the writes,
and carries them out in the target through the adapter (which paces every call
by the quota buckets). Objects a plan *requires* in the target (a thing's type,
groups and certificates; a certificate's policies; a group's parent) are
applied first, in the same job; objects it leaves behind (*follow-ups*: a
detached certificate, a re-created group's members) are journaled as new
changes. What a plan *schedules* (a thing type's deletion five minutes after its
deprecation) stays pending until then.

Failures are never swallowed: the engine applies one claim and raises, and
the journal worker that runs it (``_worker.py``) decides what the failure means.

Modes: ``complete`` replicates things, types, groups, certificates, policies
and shadows; ``jitr`` leaves certificates and policies to the target region's
JITR handler and replicates the rest.

Directions: ``forward`` (primary to secondary) makes the target match the
source; ``failback`` (secondary to primary, after an outage) copies back only
what changed in the source since the two regions were last in sync. Both
directions record each registry object's sync point (a region-neutral
fingerprint, ``_sync.py``) whenever they leave the two regions equal, and
shadows' sync points (versions) as before; failback reads them.

Both ways (``both_ways``, ``--failback auto``, ``_failback.py``): the object is
judged three ways (``_sync.judge``) and written toward the stale side; when
that is the source, the other direction's assessor plans it. The failback
queue is this engine on another queue (:meth:`Engine.serving`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from replicator.core._ops import (
    Conflict,
    CreateThing,
    DeleteThingShadow,
    DeprecateThingType,
    Plan,
    ScheduleAt,
    UpdateThingShadow,
)
from replicator.core._records import ObjectNamed, ThingChanged
from replicator.core._state import ObjectKey, ShadowState
from replicator.core._sync import UNSETTLED
from replicator.runtime._assess import Assessment, Assessor
from replicator.runtime._settings import EngineConfig
from replicator.runtime._stats import EngineStats
from replicator.runtime._worker import Deferred, JournalWorker, Outcome, Worked

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Iterator

    from replicator.core._region import RegionApi
    from replicator.core._sync import Direction
    from replicator.runtime._journal import Claim, Journal

__all__ = ["Engine", "EngineConfig", "EngineStats", "Outcome"]

logger = logging.getLogger(__name__)

_MAX_REQUIRE_DEPTH = 6
_HELD_S = 0.2  # how long a follow-up claimed during its parent's writes waits
_ENSURED_PRUNE_AT = 10_000  # entries of the "applied recently" memo before old ones go


class Engine(Worked):
    """Applies journaled changes from ``source`` to ``target``.

    Args:
        source: the region changes are copied from (the primary; the secondary
            when failing back).
        target: the region they are copied to.
        journal: the durable queue of changes.
        config: how to work.
        wall: epoch seconds (journal times, thing type deprecation dates).
        rng: jitter of the retry backoff.

    Observers (:meth:`add_observer`) get the :class:`Outcome` of every processed
    change, from the worker threads: they must be quick and must not raise.
    """

    def __init__(
        self,
        *,
        source: RegionApi,
        target: RegionApi,
        journal: Journal,
        config: EngineConfig | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.journal = journal
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter
        config = self.config
        back: Direction = "forward" if config.direction == "failback" else "failback"

        def assessor(source: RegionApi, target: RegionApi, direction: Direction) -> Assessor:
            return Assessor(
                source,
                target,
                journal,
                mode=config.mode,
                wall=wall,
                delete_after_s=config.thing_type_delete_after_s,
                direction=direction,
                judged=config.keep_target_changes or config.both_ways,
                delete_target_only=config.delete_target_only,
            )

        self._ahead = assessor(source, target, config.direction)
        self._back = assessor(target, source, back) if config.both_ways else None
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()  # guards _inflight and _held
        self._inflight: dict[ObjectKey, threading.Event] = {}
        # follow-ups of writes in progress: journaled first, claimed only after the writes
        self._held: dict[ObjectKey, int] = {}
        self._ensured: dict[ObjectKey, float] = {}
        self._passes: list[float] = []  # start times of the reconcile passes running
        self._observers: list[Callable[[Outcome], None]] = [self.stats.observe]
        self._writes = threading.local()

    def __repr__(self) -> str:
        return (
            f"Engine({self.source.region} -> {self.target.region}, mode={self.config.mode}, "
            f"{self.config.direction}, "
            f"applied={self.stats.applied}, dead={self.stats.dead})"
        )

    def serving(self, journal: Journal, *, rng: random.Random | None = None) -> Engine:
        """This engine on ``journal``'s queue, from the other side (the failback queue).

        The changes of that queue (fed by the secondary) are judged and written
        as this engine's are, with the same per-object locks and follow-ups
        held: one engine, whichever queue a change arrives in. Its outcomes
        (and statistics) are its own, for the queue's metrics; ``rng``: its
        retries' jitter (this engine's by default).
        """
        if self._back is None:
            raise ValueError("only an engine that runs both ways serves the other queue")
        face = copy.copy(self)
        face.source, face.target, face.journal = self.target, self.source, journal
        face.config = replace(self.config, direction=self._back.direction)
        face._ahead, face._back = self._back, self._ahead
        face.stats = EngineStats()
        face._observers = [face.stats.observe]
        face._writes = threading.local()
        face._rng = rng or self._rng
        return face

    def _is_held(self, key: ObjectKey) -> bool:
        with self._keys_lock:
            return key in self._held

    def _held_keys(self) -> list[ObjectKey]:
        with self._keys_lock:
            return list(self._held)

    @property
    def worker(self) -> JournalWorker:
        """The journal worker that runs this engine (of the current config)."""
        return self._worker(
            self.config,
            batch=self.config.batch,
            events="replicator.apply",
            direction=self.config.direction,
            held=self._held_keys,
            writes=lambda: tuple(getattr(self._writes, "apis", ())),
        )

    # -- reading and planning ---------------------------------------------------------------

    def assess(self, key: ObjectKey, *, one_way: bool = False) -> Assessment:
        """Read ``key`` in both regions and plan, judged as :meth:`apply` does; no writes.

        Reconcile uses it for a dry run. ``one_way``: this direction's plan only.
        """
        return self._judged(key, required=False, one_way=one_way)[0]

    def _judged(
        self, key: ObjectKey, *, required: bool, one_way: bool
    ) -> tuple[Assessment, Assessor]:
        """The plan toward the stale side, and the assessor that made it (its direction)."""
        found = self._ahead.assess(key, required=required)
        if found.backward and self._back is not None and not one_way:
            return self._back.assess(key, required=required), self._back
        return found, self._ahead

    # -- applying ---------------------------------------------------------------------------

    def apply(self, key: ObjectKey, *, one_way: bool = False) -> Plan:
        """Make ``key`` the same in both regions (requirements first); return the plan.

        Written toward the target, or toward the source when the engine runs
        both ways and only the target changed since the last sync (unless
        ``one_way``: the full pass of automatic failback copies back only).

        Raises:
            ReplicatorError: a read or a write failed (see the module docstring).
        """
        _, mine = self._enter(key)
        try:
            return self._apply(key, depth=0, chain=frozenset(), one_way=one_way)[0]
        finally:
            self._leave(key, mine)

    def _apply(
        self, key: ObjectKey, *, depth: int, chain: frozenset[ObjectKey], one_way: bool = False
    ) -> tuple[Plan, Direction]:
        assessment, assessor = self._judged(key, required=depth > 0, one_way=one_way)
        plan = assessment.plan
        wrote = False
        for required in plan.requires:
            if required in chain or depth >= _MAX_REQUIRE_DEPTH or self._recently_ensured(required):
                continue
            wrote |= self._apply_required(required, depth=depth + 1, chain=chain | {key})
        if wrote:  # what the plan saw of the target has changed: plan again
            assessment = assessor.assess(key, source_state=assessment.source, required=depth > 0)
            plan = assessment.plan
        now = self._wall()
        follow_ups = list(plan.follow_ups)
        with self._keys_lock:
            for follow in follow_ups:  # held: claimed only once the writes are done
                self._held[follow] = self._held.get(follow, 0) + 1
        try:
            for follow in follow_ups:  # journaled before the writes: pending while they run
                self.journal.accept(ObjectNamed(key=follow, region=self.source.region), now=now)
                regions = (self.source.region, self.target.region)
                if (
                    follow.kind != "shadow"
                    and assessor.direction == "forward"
                    and self.journal.object_sync(follow, regions) is not None
                ):
                    # these writes change a synced object in the secondary: the engine's
                    # doing, not a change made there to copy back (_sync.py); a
                    # never-synced one stays so (a device registered there is kept)
                    self.journal.set_object_sync(follow, regions, UNSETTLED, now=now)
            self._execute_holding_types(key, assessment, assessor)
        finally:
            with self._keys_lock:
                for follow in follow_ups:
                    left = self._held[follow] - 1
                    if left:
                        self._held[follow] = left
                    else:
                        del self._held[follow]
        now = self._wall()
        with self._lock:
            self._ensured[key] = now
            if len(self._ensured) > _ENSURED_PRUNE_AT:
                horizon = min([now - self.config.dependency_ttl_s, *self._passes])
                self._ensured = {k: t for k, t in self._ensured.items() if t >= horizon}
        return plan, assessor.direction

    def _execute_holding_types(
        self, key: ObjectKey, assessment: Assessment, assessor: Assessor
    ) -> None:
        plan = assessment.plan
        # A thing's plan may undo a type's deprecation for a moment (AWS refuses a
        # deprecated type on a thing): hold the type too, so that nothing else (the
        # failback queue seeing the moment's echo) takes it for a change.
        types = {
            ObjectKey.thing_type(op.type_name)
            for op in plan.ops
            if isinstance(op, DeprecateThingType) and op.undo and key.kind != "thingType"
        }
        held = [(type_key, self._enter(type_key)[1]) for type_key in sorted(types)]
        try:
            self._execute(assessment, assessor)
        finally:
            for held_key, token in held:
                self._leave(held_key, token)

    def _apply_required(self, key: ObjectKey, *, depth: int, chain: frozenset[ObjectKey]) -> bool:
        """Apply a requirement (unless another worker just did); return whether it wrote."""
        waited, mine = self._enter(key)
        try:
            if waited and self._recently_ensured(key):
                return True  # written or not, by another worker: plan again to be sure
            plan, _ = self._apply(key, depth=depth, chain=chain)
            for op in plan.ops:
                if isinstance(op, ScheduleAt):
                    record = ObjectNamed(key=op.key, region=self.source.region)
                    self.journal.accept(record, now=self._wall(), not_before=op.epoch_s)
            return bool(plan.writes)
        finally:
            self._leave(key, mine)

    def _enter(self, key: ObjectKey) -> tuple[bool, threading.Event]:
        """Become the one worker applying ``key``, waiting for another that is; (waited, token)."""
        waited = False
        while True:
            with self._keys_lock:
                running = self._inflight.get(key)
                if running is None:
                    mine = threading.Event()
                    self._inflight[key] = mine
                    return waited, mine
            waited = True
            running.wait(60.0)

    def _leave(self, key: ObjectKey, mine: threading.Event) -> None:
        with self._keys_lock:
            if self._inflight.get(key) is mine:
                del self._inflight[key]
        mine.set()

    def _recently_ensured(self, key: ObjectKey) -> bool:
        with self._lock:
            when = self._ensured.get(key)
            in_pass = when is not None and bool(self._passes) and when >= min(self._passes)
        if when is None:
            return False
        return in_pass or self._wall() - when < self.config.dependency_ttl_s

    @contextlib.contextmanager
    def full_pass(self) -> Iterator[None]:
        """Within: an object applied since the pass began counts as in place for its dependents.

        A reconcile applies every kind in dependency order, so a thing's
        certificates were made right earlier in the same pass: reading them
        again as requirements (once ``dependency_ttl_s`` has gone by, in a pass
        that takes longer) would only spend the quota.
        """
        started = self._wall()
        with self._lock:
            self._passes.append(started)
        try:
            yield
        finally:
            with self._lock:
                self._passes.remove(started)

    def _execute(self, assessment: Assessment, assessor: Assessor) -> None:
        plan = assessment.plan
        ahead = assessor is self._ahead
        source, target = (self.source, self.target) if ahead else (self.target, self.source)
        key = plan.key
        for op in plan.ops:
            if isinstance(op, ScheduleAt):
                continue
            if isinstance(op, Conflict):
                with self._lock:
                    self.stats.conflicts += 1
                logger.warning("replicator.conflict", extra={"key": str(key), "reason": op.reason})
                continue
            result = target.execute(op)
            with self._lock:
                self.stats.writes[op.api] = self.stats.writes.get(op.api, 0) + 1
            getattr(self._writes, "apis", []).append(op.api)
            if isinstance(op, UpdateThingShadow) and result is not None:
                self.journal.set_shadow_sync(
                    key,
                    source=(source.region, op.source_version),
                    target=(target.region, result),
                    now=self._wall(),
                )
            elif isinstance(op, DeleteThingShadow):
                self.journal.forget_shadow_sync(key)
        if key.kind != "shadow":
            self._record_sync(assessment, assessor)
        elif plan.in_sync:
            read, found = assessment.source, assessment.target
            if isinstance(read, ShadowState) and isinstance(found, ShadowState):
                self.journal.set_shadow_sync(
                    key,
                    source=(source.region, read.version),
                    target=(target.region, found.version),
                    now=self._wall(),
                )
        if plan.writes:
            logger.info(
                "replicator.applied",
                extra={"key": str(key), "writes": [type(op).__name__ for op in plan.writes]},
            )

    def _record_sync(self, assessment: Assessment, assessor: Assessor) -> None:
        """After a registry object's plan ran: record its sync point if the regions now agree."""
        plan = assessment.plan
        if any(isinstance(op, (Conflict, ScheduleAt)) for op in plan.ops):
            return
        if self.config.mode == "jitr" and plan.key.kind == "certificate":
            return  # only a refusal was mirrored: the regions do not hold the same certificate
        source, target = assessor.fingerprints(assessment)
        if not plan.writes and source != target:
            return  # a guarded failback plan: nothing was made equal
        regions = (self.source.region, self.target.region)
        if self.journal.object_sync(plan.key, regions) != source:
            self.journal.set_object_sync(plan.key, regions, source, now=self._wall())

    # -- the journal ------------------------------------------------------------------------

    def _apply_claim(self, claim: Claim) -> tuple[str, float | None]:
        """The worker's ``apply``: one claim, finished in the journal; (result, lag)."""
        self._writes.apis = []
        _, mine = self._enter(claim.key)
        try:
            return self._settle(claim)
        finally:
            self._leave(claim.key, mine)

    def _settle(self, claim: Claim) -> tuple[str, float | None]:
        key = claim.key
        if self._is_held(key):  # a follow-up of writes still running: after them
            reason = "after the writes that made it a follow-up"
            raise Deferred(until=self._wall() + _HELD_S, reason=reason)
        plan, direction = self._apply(key, depth=0, chain=frozenset())
        now = self._wall()
        lag = max(0.0, now - claim.due_since)
        with self._lock:
            self.stats.applied += 1
            self.stats.in_sync += plan.in_sync
            self.stats.lag_s.append(lag)
        schedule = [op for op in plan.ops if isinstance(op, ScheduleAt)]
        if schedule:
            due = min(op.epoch_s for op in schedule)
            self.journal.schedule(claim, now=now, not_before=due, reason=schedule[0].reason)
            with self._lock:  # counted once it is in the journal
                self.stats.scheduled += 1
            return "scheduled", lag
        self.journal.done(claim, now=now)
        record = claim.record
        recheck = self.config.thing_recheck_s
        created_event = isinstance(record, ThingChanged) and record.operation == "CREATED"
        created = created_event or (
            # creates in the primary echo into the forward queue, which re-checks them
            direction == "forward" and any(isinstance(op, CreateThing) for op in plan.ops)
        )
        if (
            recheck is not None
            and key.kind == "thing"
            and created
            and self.config.mode == "complete"
        ):
            # AWS publishes no event when a certificate is attached, usually just after
            # the create: look again. (The journal keeps an object's latest record only,
            # so a type association right after the create must not hide the create.)
            again = ObjectNamed(key=key, region=self.source.region)
            self.journal.accept(again, now=now, not_before=now + recheck)
        return "done", lag

    def run_once(self, executor: concurrent.futures.Executor | None = None) -> int:
        """Process every change due now (in ``executor`` when given); return how many."""
        return len(self.worker.run_once(executor))

    def run(self, stop: threading.Event) -> None:
        """Process changes as they come due until ``stop`` is set (:meth:`JournalWorker.run`)."""
        self.worker.run(stop)
