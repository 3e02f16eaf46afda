"""Reconcile: a full diff of both regions, the plan per object, repaired unless it is a dry run.

Every object of every kind is listed in both regions (paginated), in
dependency order (types, groups, policies, certificates, things, shadows), and
each one present in either region is assessed by the engine: the same reads
and the same pure planner as the event path, so reconcile and replication can
never disagree about what "in sync" means. Objects are assessed in parallel by
``workers`` threads; the adapter's quota buckets keep the calls within AWS's
rates. An object whose read or write fails is reported with the error and the
run goes on, except for AccessDenied, which stops it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import AccessDeniedError, CredentialsError, ReplicatorError
from replicator.core._ops import Conflict, ScheduleAt, describe
from replicator.core._records import ObjectNamed
from replicator.core._state import KINDS, ObjectKey

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from replicator.core._ops import Plan
    from replicator.core._state import Kind
    from replicator.runtime._engine import Engine

__all__ = ["Difference", "ReconcileReport", "reconcile"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Difference:
    """An object the regions disagree on: its plan, or the error that stopped its assessment."""

    key: ObjectKey
    ops: tuple[dict[str, object], ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        found: dict[str, object] = {"key": str(self.key), "kind": self.key.kind}
        if self.ops:
            found["ops"] = list(self.ops)
        if self.error is not None:
            found["error"] = self.error
        return found


@dataclass(slots=True)
class ReconcileReport:
    """What reconcile compared, found and did.

    Attributes:
        source: the source region.
        target: the target region.
        mode: the replication mode.
        dry_run: whether writes were left out.
        compared: objects compared, by kind.
        differing: objects that differed, by kind.
        conflicts: differences left alone on purpose (newer in the target...).
        interrupted: the run was stopped before it compared everything.
        errors: objects whose assessment or repair failed.
        differences: the objects that differed, with their plans.
    """

    source: str
    target: str
    mode: str
    dry_run: bool
    compared: dict[str, int] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    interrupted: bool = False
    errors: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        """Whether any object differed, or could not be compared (errors)."""
        return bool(self.differences)

    def text(self) -> str:
        """For people: a line per kind, then a line per difference."""
        verb = "would write" if self.dry_run else "wrote"
        lines = [f"reconcile {self.source} -> {self.target} ({self.mode}, {verb} the plan below)"]
        for kind, count in self.compared.items():
            lines.append(f"  {kind:12} compared {count:6}  differing {self.differing.get(kind, 0)}")
        for difference in self.differences:
            if difference.error is not None:
                lines.append(f"  {difference.key}: error: {difference.error}")
                continue
            steps = ", ".join(
                str(op["op"]) + (f" ({op['reason']})" if "reason" in op else "")
                for op in difference.ops
            )
            lines.append(f"  {difference.key}: {steps}")
        if self.interrupted:
            lines.append("  stopped before everything was compared")
        if not self.drift:
            lines.append("in sync")
        elif self.differences:
            lines.append(f"{len(self.differences)} objects differ")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts per kind and the list of differences."""
        return {
            "source": self.source,
            "target": self.target,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "compared": self.compared,
            "differing": self.differing,
            "conflicts": self.conflicts,
            "interrupted": self.interrupted,
            "errors": self.errors,
            "drift": self.drift,
            "differences": [d.as_dict() for d in self.differences],
        }


def _keys_of(engine: Engine, kind: Kind) -> list[ObjectKey]:
    if kind == "shadow":
        things = sorted(
            set(engine.source.list_names("thing")) | set(engine.target.list_names("thing"))
        )
        keys = []
        for thing in things:
            keys.append(ObjectKey.for_shadow(thing))
            names = set(engine.source.list_named_shadows(thing))
            names |= set(engine.target.list_named_shadows(thing))
            keys.extend(ObjectKey.for_shadow(thing, name) for name in sorted(names))
        return keys
    names = set(engine.source.list_names(kind)) | set(engine.target.list_names(kind))
    return [ObjectKey(kind, name) for name in sorted(names)]


def reconcile(
    engine: Engine,
    *,
    dry_run: bool,
    kinds: Iterable[Kind] = KINDS,
    workers: int = 8,
    stop: threading.Event | None = None,
    one_way: bool = False,
    thread_setup: Callable[[], None] | None = None,
) -> ReconcileReport:
    """Compare both regions completely and repair the target unless ``dry_run``.

    A plan that schedules a later step (a thing type deleted five minutes after
    its deprecation) journals it in the engine's journal. An engine running
    both ways writes each object toward its stale side, unless ``one_way``
    (the full pass of ``--failback auto``: this direction's writes only).
    Setting ``stop`` ends the run after the objects being compared
    (``interrupted``).
    ``thread_setup`` runs first in each of the pass's threads (the anti-entropy
    pass takes its quota share there).

    Raises:
        AccessDeniedError: a permission is missing (the report so far is lost: fix and rerun).
    """
    report = ReconcileReport(
        source=engine.source.region,
        target=engine.target.region,
        mode=engine.config.mode,
        dry_run=dry_run,
    )
    wanted = [k for k in KINDS if k in set(kinds)]
    if engine.config.mode == "jitr":  # certificates: only refusals, forward (see _assess.py)
        skipped = ("policy",) if engine.config.direction == "forward" else ("certificate", "policy")
        wanted = [k for k in wanted if k not in skipped]
    stop = stop or threading.Event()
    pool_of = concurrent.futures.ThreadPoolExecutor(max(1, workers), initializer=thread_setup)
    with engine.full_pass(), pool_of as pool:
        for kind in wanted:
            if stop.is_set():
                break
            keys = _keys_of(engine, kind)
            report.compared[kind] = len(keys)
            outcomes = pool.map(
                lambda key: _one(engine, key, dry_run=dry_run, stop=stop, one_way=one_way), keys
            )
            for key, outcome in zip(keys, outcomes, strict=True):
                if outcome is None:  # in sync, or not compared (stopped)
                    continue
                report.differences.append(outcome)
                report.differing[kind] = report.differing.get(kind, 0) + 1
                report.errors += outcome.error is not None
                report.conflicts += sum(1 for op in outcome.ops if op["op"] == "Conflict")
                logger.info("replicator.reconcile.difference", extra={"key": str(key)})
    report.interrupted = stop.is_set()
    logger.info(
        "replicator.reconcile.complete",
        extra={"compared": report.compared, "differing": report.differing, "dry_run": dry_run},
    )
    return report


def _one(
    engine: Engine, key: ObjectKey, *, dry_run: bool, stop: threading.Event, one_way: bool
) -> Difference | None:
    if stop.is_set():
        return None
    try:
        if dry_run:
            plan: Plan = engine.assess(key, one_way=one_way).plan
        else:
            plan = engine.apply(key, one_way=one_way)
    except (AccessDeniedError, CredentialsError):
        raise
    except ReplicatorError as exc:
        return Difference(key, error=f"{type(exc).__name__}: {exc}")
    if plan.in_sync:
        return None
    if not dry_run:
        for op in plan.ops:
            if isinstance(op, ScheduleAt):
                record = ObjectNamed(key=op.key, region=engine.source.region)
                engine.journal.accept(record, now=engine.now(), not_before=op.epoch_s)
    ops = tuple(describe(op) for op in plan.ops)
    for op in plan.ops:
        if isinstance(op, Conflict):
            logger.warning(
                "replicator.reconcile.conflict", extra={"key": str(key), "reason": op.reason}
            )
    return Difference(key, ops)
