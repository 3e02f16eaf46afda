"""The journal worker: claim due changes, apply each, and decide what a failure means.

One loop for every queue of the journal: the engine's (``changes``,
``failback``) and the JITR handler's (``jitr``); the services, the one-shot
commands, the replicator Lambda's batches and the JITR Lambda's sweeps run it.
What it applies is a callable, ``apply(claim) -> (result, lag)``, that
finishes the claim in the journal when it succeeds (done or scheduled),
raises :class:`Deferred` to look again later (not a failure), and raises
anything else when it fails. The worker settles a failure by
:func:`classify`, the policy documented in ``_errors.py``: stop, wait (pending
without limit), limited (pending up to ``max_attempts``, then dead) or dead.
Pending changes wait the ``backoff`` policy's capped, jittered delay. Every
processed change ends in one :class:`Outcome`, handed to the observers (the
engine's and the handler's statistics, the service's metrics and readiness).
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from replicator._errors import (
    AccessDeniedError,
    CredentialsError,
    PermanentError,
    RegionError,
    RegionUnavailableError,
    ReplicatorError,
    ThrottledError,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from replicator.core._jitr_plan import JitrConfig
    from replicator.core._state import ObjectKey
    from replicator.runtime._journal import Claim, Journal
    from replicator.runtime._quotas import RetryPolicy
    from replicator.runtime._settings import EngineConfig

__all__ = ["Deferred", "Disposition", "JournalWorker", "Outcome", "WorkerConfig", "classify"]

logger = logging.getLogger(__name__)

Disposition = Literal["stop", "wait", "limited", "dead"]
_MIN_DELAY_S = 0.05  # a retried change is never due again at once
_DRAIN_ROUNDS = 1000  # drain()'s bound, should changes keep falling due at once
_WAITING = frozenset({"retry", "throttled", "unavailable", "denied"})  # still pending


class Deferred(Exception):  # noqa: N818 - not an error: the apply's "not now"
    """Raised by an apply: try the change again at ``until``; no attempt is counted."""

    def __init__(self, *, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


def classify(exc: BaseException) -> Disposition:
    """What a failure of one change means (the policy in ``_errors.py``)."""
    if isinstance(exc, AccessDeniedError | CredentialsError):
        return "stop"
    if isinstance(exc, ThrottledError | RegionUnavailableError):
        return "wait"
    if isinstance(exc, PermanentError):
        return "dead"
    return "limited"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the processing of one claimed change ended, for observers (metrics, statistics).

    Attributes:
        key: the object.
        result: the apply's result (the engine's ``done``, ``scheduled``,
            ``deferred``; the JITR handler's ``activated``, ``refused``...), or
            the worker's: ``retry`` (a failure to try again), ``throttled``,
            ``unavailable`` (a region is down), ``denied`` or ``dead``.
        lag_s: from acceptance to applied, when the apply says so, else None.
        writes: the write APIs called for it (requirements included).
        region: for ``unavailable`` and ``throttled``, the region that failed.
        direction: ``forward``, ``failback`` or ``jitr``.
    """

    key: ObjectKey
    result: str
    lag_s: float | None = None
    writes: tuple[str, ...] = ()
    region: str | None = None
    direction: str = "forward"

    @property
    def waiting(self) -> bool:
        """The change is still pending, to be tried again after a backoff."""
        return self.result in _WAITING


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """How the worker claims and retries.

    Attributes:
        workers: changes applied in parallel.
        batch: rows claimed at a time by :meth:`JournalWorker.run_once`.
        max_attempts: attempts before a ``limited`` failure is dead-lettered.
        backoff: the wait before a failed change is tried again.
        poll_s: how often to look for due changes when there are none.
        events: the log events' prefix (``replicator.apply``: ``replicator.apply.retry``).
        direction: what the outcomes say (``forward``, ``failback``, ``jitr``).
    """

    workers: int
    batch: int
    max_attempts: int
    backoff: RetryPolicy
    poll_s: float
    events: str
    direction: str = "forward"


class JournalWorker:
    """Claims due changes of one journal queue and applies them.

    Args:
        journal: the queue.
        apply: applies one claim and finishes it in the journal; raises on failure.
        config: how to claim and retry.
        wall: epoch seconds (journal times).
        rng: jitter of the backoff.
        log_fields: the log lines' fields that name a change.
        held: keys not to claim now (follow-ups of writes in progress).
        writes: the write APIs the calling thread's apply made (for :class:`Outcome`).
        observers: called with every :class:`Outcome` (a list the caller may share).
    """

    def __init__(
        self,
        journal: Journal,
        apply: Callable[[Claim], tuple[str, float | None]],
        config: WorkerConfig,
        *,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        log_fields: Callable[[ObjectKey], dict[str, str]] | None = None,
        held: Callable[[], list[ObjectKey]] | None = None,
        writes: Callable[[], tuple[str, ...]] | None = None,
        observers: list[Callable[[Outcome], None]] | None = None,
    ) -> None:
        self.journal = journal
        self.config = config
        self._apply = apply
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter
        self._fields = log_fields or (lambda key: {"key": str(key)})
        self._held = held or list
        self._writes = writes or tuple
        self.observers: list[Callable[[Outcome], None]] = [] if observers is None else observers

    def __repr__(self) -> str:
        return f"JournalWorker({self.journal.path!r}, queue={self.journal.queue!r})"

    def process(self, claim: Claim) -> str:
        """Apply one claimed change and record the outcome; return it.

        ``throttled`` and ``unavailable`` are returned as ``retry`` (observers
        see which).

        Raises:
            AccessDeniedError: the credentials lack a permission (the change stays pending).
            CredentialsError: there are no usable credentials (the change stays pending).
        """
        result, lag, region = "denied", None, None
        try:
            try:
                result, lag = self._apply(claim)
            except Deferred as later:
                now = self._wall()
                self.journal.defer(claim, now=now, not_before=later.until, reason=later.reason)
                result = "deferred"
            except Exception as exc:  # noqa: BLE001 - every failure ends in the journal
                result, region = self._failed(claim, exc)
        finally:
            outcome = Outcome(claim.key, result, lag, self._writes(), region, self.config.direction)
            for observe in self.observers:
                observe(outcome)
        return "retry" if result in ("throttled", "unavailable") else result

    def _failed(self, claim: Claim, exc: Exception) -> tuple[str, str | None]:
        """Settle a failed claim in the journal: (the result, the region that failed)."""
        disposition = classify(exc)
        region = exc.region if isinstance(exc, RegionError) else None
        if disposition == "stop":
            self._retry(claim, exc)
            raise exc
        if disposition == "dead":
            return self._dead(claim, str(exc)), None
        if disposition == "wait":
            self._retry(claim, exc)
            return ("throttled" if isinstance(exc, ThrottledError) else "unavailable"), region
        if not isinstance(exc, ReplicatorError):  # a bug: its traceback, once per attempt
            logger.error(self._event("failed"), extra=self._fields(claim.key), exc_info=exc)
        if claim.attempts + 1 >= self.config.max_attempts:
            reason = f"after {claim.attempts + 1} attempts: {type(exc).__name__}: {exc}"
            return self._dead(claim, reason), None
        return self._retry(claim, exc), None

    def _event(self, name: str) -> str:
        return f"{self.config.events}.{name}"

    def _retry(self, claim: Claim, exc: BaseException) -> str:
        reason = f"{type(exc).__name__}: {exc}"
        now = self._wall()
        delay = max(self.config.backoff.delay(claim.attempts, self._rng), _MIN_DELAY_S)
        self.journal.retry(claim, now=now, not_before=now + delay, reason=reason)
        logger.warning(
            self._event("retry"),
            extra={
                **self._fields(claim.key),
                "attempt": claim.attempts + 1,
                "delay_s": round(delay, 3),
                "reason": reason,
            },
        )
        return "retry"

    def _dead(self, claim: Claim, reason: str) -> str:
        self.journal.dead(claim, now=self._wall(), reason=reason)
        logger.error(self._event("dead"), extra={**self._fields(claim.key), "reason": reason})
        return "dead"

    # -- loops ------------------------------------------------------------------------------

    def run_once(
        self, executor: concurrent.futures.Executor | None = None, *, ahead_s: float = 0.0
    ) -> dict[ObjectKey, str]:
        """Process every change due now (in ``executor`` when given); their results.

        Args:
            executor: where to process them; None: one after the other, here.
            ahead_s: also claim what falls due this much later (a Lambda's retry).

        Raises:
            AccessDeniedError: see :meth:`process`; after the other claims finished.
        """
        claims = self.journal.claim(
            now=self._wall() + ahead_s, limit=self.config.batch, exclude=self._held()
        )
        results: dict[ObjectKey, str] = {}
        if executor is None:
            for claim in claims:
                results[claim.key] = self.process(claim)
            return results
        futures = {executor.submit(self.process, claim): claim.key for claim in claims}
        denied: BaseException | None = None
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except (AccessDeniedError, CredentialsError) as exc:
                denied = exc
        if denied is not None:
            raise denied
        return results

    def drain(self) -> int:
        """Process due changes until none is due (tests, one-shot runs); return how many.

        Raises:
            AccessDeniedError: see :meth:`process`.
        """
        total = 0
        with concurrent.futures.ThreadPoolExecutor(self.config.workers) as executor:
            for _ in range(_DRAIN_ROUNDS):
                done = len(self.run_once(executor))
                total += done
                if not done:
                    break
        return total

    def run(self, stop: threading.Event, *, tick: Callable[[], None] | None = None) -> None:
        """Process changes as they come due until ``stop`` is set.

        Claims keep ``workers`` busy without waiting for a whole batch: a row is
        claimed again only after its previous processing ended.

        Args:
            stop: set it to stop.
            tick: called before every look for due changes (the JITR sweep).

        Raises:
            AccessDeniedError: see :meth:`process`; the loop stops.
        """
        workers = self.config.workers
        running: dict[concurrent.futures.Future[str], ObjectKey] = {}
        with concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix=self.config.events.split(".")[0]
        ) as pool:
            try:
                while not stop.is_set():
                    if tick is not None:
                        tick()
                    room = workers * 2 - len(running)
                    claims = (
                        self.journal.claim(
                            now=self._wall(),
                            limit=room,
                            exclude=[*running.values(), *self._held()],
                        )
                        if room > 0
                        else []
                    )
                    for claim in claims:
                        running[pool.submit(self.process, claim)] = claim.key
                    if not running:
                        stop.wait(self.config.poll_s)
                        continue
                    finished, _ = concurrent.futures.wait(
                        running, timeout=self.config.poll_s, return_when="FIRST_COMPLETED"
                    )
                    for future in finished:
                        del running[future]
                        future.result()  # re-raises AccessDeniedError
            finally:
                stop.set()
                for future in running:
                    future.cancel()


class Worked:
    """What the engine and the JITR handler share: a clock, observers, and their worker's loops.

    Each runs a :class:`JournalWorker` on its own journal queue and ``_apply_claim``.
    """

    journal: Journal
    _wall: Callable[[], float]
    _rng: random.Random
    _observers: list[Callable[[Outcome], None]]

    def _apply_claim(self, claim: Claim) -> tuple[str, float | None]:
        raise NotImplementedError

    def _worker(
        self,
        config: EngineConfig | JitrConfig,
        *,
        batch: int,
        events: str,
        direction: str,
        **hooks: Any,
    ) -> JournalWorker:
        """The journal worker of this queue, tuned by ``config`` (``hooks``: the worker's own)."""
        return JournalWorker(
            self.journal,
            self._apply_claim,
            WorkerConfig(
                workers=config.workers,
                batch=batch,
                max_attempts=config.max_attempts,
                backoff=config.backoff,
                poll_s=config.poll_s,
                events=events,
                direction=direction,
            ),
            wall=self._wall,
            rng=self._rng,
            observers=self._observers,
            **hooks,
        )

    @property
    def worker(self) -> JournalWorker:
        """The journal worker that runs this queue."""
        raise NotImplementedError

    def now(self) -> float:
        """The wall clock, in epoch seconds."""
        return self._wall()

    def add_observer(self, observer: Callable[[Outcome], None]) -> None:
        """Also call ``observer`` with every :class:`Outcome` of the queue."""
        self._observers.append(observer)

    def process(self, claim: Claim) -> str:
        """Apply one claimed change and record the outcome (see :meth:`JournalWorker.process`)."""
        return self.worker.process(claim)

    def drain(self) -> int:
        """Process due changes until none is due (tests, one-shot runs); return how many."""
        return self.worker.drain()
