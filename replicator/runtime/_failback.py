"""Automatic failback: both directions in one service, and a full pass when the primary returns.

Theory of operation. With ``iotdr replicator run --failback auto`` the service
runs one engine both ways (``both_ways``) on two queues of one journal file:
``changes``, fed by the primary's broker, and ``failback``, fed by the
secondary's (the same engine, :meth:`~replicator.runtime._engine.Engine.serving`).
Whichever queue a change arrives in, the object is judged three ways, its two
regions against its sync point (``_sync.judge``), and written toward the stale
side: a change made in the secondary while devices are there (a device
registered by JITR, a shadow a device reported, an operator's edit) is copied
back as soon as the primary accepts writes; while the primary is down it
waits in its queue with backoff, as any change does. One object is applied by
one worker at a time, whatever the queue, and the echo of the engine's own
writes in the other region is judged as in sync.

What events cannot cover (the secondary's broker dropped a message, the
replicator was down during the outage) a full pass does: when the primary's
control plane comes back after either queue saw it unavailable,
:class:`AutoFailback` wakes the forward queue, runs the failback reconcile
(one way: it copies back only what changed in the secondary; what the
primary changed is the forward queue's, and the primary wins), then wakes the
failback queue, so that changes backing off for minutes are tried at once.
The primary being down is learnt from both queues' outcomes and kept in the
journal (``failback_due``) until a pass completes, so that a restart in
between still runs it; the primary's return is learnt from a cheap read
probed every ``probe_interval_s`` while it is down. A pass whose listing
fails (the primary down again, throttling beyond the retries) or that is
stopped stays due; objects that failed in a pass are journaled in the failback
queue, where they are retried (and dead-lettered if they keep failing) like
any change, and the pass counts as done.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from replicator._errors import (
    AccessDeniedError,
    CredentialsError,
    ReplicatorError,
    RetryableError,
)
from replicator.core._records import ObjectNamed
from replicator.runtime._host import Hosted
from replicator.runtime._reconcile import reconcile

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.runtime._engine import Engine
    from replicator.runtime._worker import Outcome

__all__ = ["AutoFailback", "OutageWatch"]

logger = logging.getLogger(__name__)

_DUE: Final = "failback_due"  # journal meta: an outage was seen, the full pass not yet done
_PROBE_THING = "iotdr-failback-probe"  # read, never written: NotFound means the region answers


class OutageWatch:
    """Whether a region is down, from outcomes naming it and from probes.

    Args:
        region: the region watched (the primary).
        clock: monotonic seconds.
        on_down: called (once per outage) when the region is first seen down.
    """

    def __init__(
        self,
        region: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self.region = region
        self._clock = clock
        self._on_down = on_down
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.outages = 0

    def __repr__(self) -> str:
        return f"OutageWatch({self.region}, down={self.down})"

    @property
    def down(self) -> bool:
        """Whether the region was last seen unavailable."""
        with self._lock:
            return self._down_since is not None

    def observe(self, outcome: Outcome) -> None:
        """Take an outcome of the engine copying from (or to) the region."""
        if outcome.result == "unavailable" and outcome.region == self.region:
            with self._lock:
                went_down = self._down_since is None
                if went_down:
                    self._down_since = self._clock()
                    self.outages += 1
            if went_down and self._on_down is not None:
                self._on_down()

    def mark_down(self) -> None:
        """Mark the region down (a full pass could not finish)."""
        with self._lock:
            if self._down_since is None:
                self._down_since = self._clock()

    def came_back(self) -> float | None:
        """Mark the region up (a probe succeeded); return how long it was down, or None."""
        with self._lock:
            since, self._down_since = self._down_since, None
        return None if since is None else self._clock() - since


class AutoFailback:
    """The failback queue's loop and the full pass after each outage of the primary.

    Args:
        forward: the engine, running both ways (its outcomes are watched).
        failback: the same engine on the failback queue (``forward.serving(journal)``).
        report: called with one JSON-ready line per lifecycle event.
        probe_interval_s: how often to probe the primary while it is down.
        workers: reconcile's parallelism.
    """

    def __init__(
        self,
        forward: Engine,
        failback: Engine,
        *,
        report: Callable[[dict[str, Any]], None],
        probe_interval_s: float = 5.0,
        workers: int = 8,
    ) -> None:
        if not forward.config.both_ways or failback.config.direction != "failback":
            raise ValueError("AutoFailback needs an engine running both ways, on two queues")
        self.forward = forward
        self.failback = failback
        self.watch = OutageWatch(forward.source.region, on_down=self._remember_outage)
        if forward.journal.meta(_DUE) is not None:  # an outage before a restart, not failed back
            self.watch.mark_down()
        self.passes = 0
        self.failed: BaseException | None = None
        self._report = report
        self._probe_interval_s = probe_interval_s
        self._workers = workers
        forward.add_observer(self.watch.observe)
        failback.add_observer(self.watch.observe)

    def __repr__(self) -> str:
        return f"AutoFailback({self.watch!r}, passes={self.passes})"

    def _remember_outage(self) -> None:
        """Keep "a full pass is due" in the journal: a restart before it must not lose it."""
        self.forward.journal.set_meta(_DUE, str(self.forward.now()), now=self.forward.now())

    def run(self, stop: threading.Event) -> None:
        """Run the failback queue and the watch until ``stop`` is set.

        Raises:
            ReplicatorError: a permission is missing in either region, or the
                journal failed (``stop`` is set, and the error kept on ``failed``).
        """
        queue = Hosted("replicator-failback", self.failback.run)
        queue.start(stop)
        try:
            while not stop.wait(self._probe_interval_s):
                if self.watch.down and self._primary_answers():
                    self.full_pass(self.watch.came_back() or 0.0, stop)
        except Exception as exc:  # noqa: BLE001 - kept on .failed and raised below
            self.failed = exc
            stop.set()
        finally:
            queue.stop()
        self.failed = self.failed or queue.failed
        if self.failed is not None:
            raise self.failed

    def _primary_answers(self) -> bool:
        try:
            self.forward.source.read_thing(_PROBE_THING, principals=False)
        except (AccessDeniedError, CredentialsError):
            raise
        except ReplicatorError:
            return False
        return True

    def full_pass(self, outage_s: float, stop: threading.Event | None = None) -> bool:
        """Copy back everything that changed in the secondary, then wake both queues.

        Returns whether the pass completed. One whose listing failed (the primary
        failed again, throttling beyond the retries) or that was stopped stays due:
        the watch is marked down again, and the journal remembers it across a
        restart. Objects that failed go to the failback queue, to be retried there.

        Raises:
            AccessDeniedError: a permission is missing.
            JournalError: the journal failed.
        """
        self._report(
            {
                "event": "replicator.failback.started",
                "primary": self.forward.source.region,
                "outage_s": round(outage_s, 3),
            }
        )
        now = self.forward.now()
        woken = self.forward.journal.wake(now=now)
        try:
            report = reconcile(
                self.failback, dry_run=False, workers=self._workers, stop=stop, one_way=True
            )
        except (AccessDeniedError, CredentialsError):
            raise
        except RetryableError as exc:
            self.watch.mark_down()
            self._report({"event": "replicator.failback.failed", "error": str(exc)})
            return False
        now = self.forward.now()
        for difference in report.differences:
            if difference.error is not None:  # tried again from the queue, with attempts
                record = ObjectNamed(key=difference.key, region=self.failback.source.region)
                self.failback.journal.accept(record, now=now)
        woken += self.failback.journal.wake(now=now)
        # Objects that failed are the failback queue's now (retries, dead letters; a
        # primary down again is seen there): only a stop leaves the pass due.
        complete = not report.interrupted
        self._report(
            {
                "event": "replicator.failback.complete"
                if complete
                else "replicator.failback.incomplete",
                "compared": report.compared,
                "copied_back": report.differing,
                "conflicts": report.conflicts,
                "errors": report.errors,
                "woken": woken,
            }
        )
        if not complete:  # stopped: run it again after the restart
            self.watch.mark_down()
            return False
        self.passes += 1
        self.forward.journal.set_meta(_DUE, None, now=self.forward.now())
        return True
