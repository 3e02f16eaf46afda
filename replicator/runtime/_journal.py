"""The journal: accepted changes, their progress, dead letters and shadow sync points, in SQLite.

Theory of operation. Apply is level-triggered, so the journal keeps one row
per *object*, not per event: the latest trigger is enough, and a thousand
events for one thing collapse into one pending row. A row is ``pending``
(with ``not_before``, the earliest time to try it), ``done`` or ``dead`` (with
the reason). Accepting a change for an object makes its row pending again and
bumps its ``generation``; the engine claims a row with its generation and
finishes it (done, retry, dead, schedule) only if the generation is still the
same: a trigger that arrived while the object was being applied is never lost
under a "done".

Durability: the database is in WAL mode with ``synchronous=FULL`` by default,
and :meth:`Journal.accept` returns only after the commit; the MQTT feed
acknowledges a message only after that, so a crash or kill -9 loses no
accepted change. A change applied before the crash but not yet marked done is
applied again after the restart, which level-triggered apply makes harmless.

One process owns a journal at a time (the engine keeps its in-flight set in
memory); threads share the connection under a lock.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from replicator._errors import JournalError
from replicator.core._record_json import record_from_json, record_to_json
from replicator.core._state import ObjectKey
from replicator.runtime._dead_letters import DeadLetterRow, DeadLetters
from replicator.runtime._sync_points import SyncPoints

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from replicator.core._records import Record

__all__ = ["Claim", "DeadLetterRow", "Journal", "JournalCounts", "RowState"]

RowState = Literal["pending", "done", "dead"]
Synchronous = Literal["FULL", "NORMAL"]
_APPLICATION_ID = 0x696F7472  # "iotr": marks the file as a replicator journal
_QUEUE_NAME = re.compile(r"[a-z][a-z_]{0,30}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {q} (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    generation INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    accepted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reason TEXT,
    due_since REAL
);
CREATE INDEX IF NOT EXISTS {q}_due ON {q} (state, not_before);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_sync (
    key TEXT PRIMARY KEY,
    source_region TEXT NOT NULL,
    source_version INTEGER NOT NULL,
    target_region TEXT NOT NULL,
    target_version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS object_sync (
    key TEXT PRIMARY KEY,
    regions TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

_ACCEPT = """
INSERT INTO {q} (
    key, record, state, generation, attempts, not_before, accepted_at, updated_at, due_since
)
VALUES (:key, :record, 'pending', 1, 0, :not_before, :now, :now, :not_before)
ON CONFLICT (key) DO UPDATE SET
    due_since = CASE
        WHEN {q}.state = 'pending'
        THEN MIN(COALESCE({q}.due_since, {q}.accepted_at), excluded.not_before)
        ELSE excluded.not_before END,
    record = excluded.record,
    generation = {q}.generation + 1,
    not_before = CASE
        WHEN {q}.state = 'pending' AND {q}.attempts > 0 THEN {q}.not_before
        WHEN {q}.state = 'pending' THEN MIN({q}.not_before, excluded.not_before)
        ELSE excluded.not_before END,
    attempts = CASE WHEN {q}.state = 'pending' THEN {q}.attempts ELSE 0 END,
    accepted_at = CASE
        WHEN {q}.state = 'pending' THEN {q}.accepted_at ELSE excluded.accepted_at END,
    reason = CASE WHEN {q}.state = 'pending' THEN {q}.reason ELSE NULL END,
    state = 'pending',
    updated_at = excluded.updated_at
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A pending change taken by the engine: finish it with the same generation."""

    key: ObjectKey
    record: Record
    generation: int
    attempts: int
    accepted_at: float
    not_before: float = 0.0
    due_since: float = 0.0
    """Since when the change has been waiting to be applied, for lag: when it was
    accepted or, when it waited on purpose (a re-check, a thing type's deletion),
    when that wait ended; failed attempts and deferrals do not move it."""


@dataclass(frozen=True, slots=True)
class JournalCounts:
    """Rows by state, due rows, dead letters, and the oldest pending row's age."""

    pending: int
    due: int
    done: int
    dead: int
    dead_letters: int
    oldest_pending_s: float
    dead_letters_pruned: int = 0


class Journal(SyncPoints, DeadLetters):
    """The replicator's SQLite journal.

    Args:
        path: the database file (created, 0600), or ``":memory:"``.
        synchronous: ``FULL`` (default: a commit survives a power cut) or ``NORMAL``
            (survives a crash or kill -9 of the process, not of the machine).
        max_dead_letters: the most dead letters kept; the oldest are pruned past it.

    Raises:
        JournalError: the file cannot be opened, or is not a journal.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        queue: str = "changes",
        max_dead_letters: int = 10_000,
    ) -> None:
        self._path = str(path)
        if max_dead_letters < 1:
            raise ValueError("max_dead_letters must be at least 1")
        self.max_dead_letters = max_dead_letters
        if not _QUEUE_NAME.fullmatch(queue):
            raise ValueError(f"queue {queue!r} is not a lower-case name")
        self._queue = queue
        self._lock = threading.Lock()
        try:
            if self._path != ":memory:":
                Path(self._path).touch(mode=0o600, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._prepare(synchronous)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(self._path, str(exc)) from exc

    def _prepare(self, synchronous: Synchronous) -> None:
        conn = self._connection()
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != _APPLICATION_ID and tables:
            raise JournalError(self._path, "not a replicator journal")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
        conn.executescript(_SCHEMA.replace("{q}", self._queue))
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({self._queue})")}
        if "due_since" not in columns:  # a journal from before lag counted from due times
            conn.execute("BEGIN IMMEDIATE")
            try:
                again = {row[1] for row in conn.execute(f"PRAGMA table_info({self._queue})")}
                if "due_since" not in again:  # not migrated by another process meanwhile
                    conn.execute(f"ALTER TABLE {self._queue} ADD COLUMN due_since REAL")
                    conn.execute(  # the queue's name is checked against _QUEUE_NAME
                        f"UPDATE {self._queue} SET due_since = CASE WHEN attempts = 0"  # noqa: S608
                        " THEN MAX(accepted_at, not_before) ELSE accepted_at END"
                    )
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise

    def __repr__(self) -> str:
        if self._conn is None:
            return f"Journal({self._path!r}, closed)"
        counts = self.counts(0.0)
        return (
            f"Journal({self._path!r}, pending={counts.pending}, done={counts.done}, "
            f"dead={counts.dead}, dead_letters={counts.dead_letters})"
        )

    @property
    def path(self) -> str:
        """Where the journal lives."""
        return self._path

    @property
    def queue(self) -> str:
        """The name of this journal's queue of changes (one file can hold several)."""
        return self._queue

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(self._path, "closed")
        return self._conn

    def _write(self, sql: str, rows: Iterable[Mapping[str, object]] | Mapping[str, object]) -> int:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                sql = sql.replace("{q}", self._queue)
                if isinstance(rows, Mapping):
                    changed = conn.execute(sql, rows).rowcount
                else:
                    changed = conn.executemany(sql, list(rows)).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise JournalError(self._path, str(exc)) from exc
            return changed

    def _read(self, sql: str, params: dict[str, object] | tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                sql = sql.replace("{q}", self._queue)
                return list(self._connection().execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise JournalError(self._path, str(exc)) from exc

    # -- accepting --------------------------------------------------------------------------

    def accept(
        self, record: Record, *, now: float, not_before: float | None = None
    ) -> list[ObjectKey]:
        """Make the objects of ``record`` pending (committed when this returns)."""
        keys = list(record.object_keys())
        text = record_to_json(record)
        due = now if not_before is None else not_before
        self._write(
            _ACCEPT, [{"key": str(k), "record": text, "not_before": due, "now": now} for k in keys]
        )
        return keys

    def accept_many(self, records: Iterable[Record], *, now: float) -> int:
        """Accept many records in one transaction; return how many objects."""
        rows = [
            {"key": str(k), "record": record_to_json(r), "not_before": now, "now": now}
            for r in records
            for k in r.object_keys()
        ]
        if rows:
            self._write(_ACCEPT, rows)
        return len(rows)

    # -- the engine's side ------------------------------------------------------------------

    def claim(self, *, now: float, limit: int, exclude: Iterable[ObjectKey] = ()) -> list[Claim]:
        """Up to ``limit`` due pending changes, oldest first, leaving out ``exclude``."""
        skip = {str(k) for k in exclude}
        rows = self._read(
            "SELECT key, record, generation, attempts, accepted_at, not_before,"
            " COALESCE(due_since, accepted_at) FROM {q}"
            " WHERE state = 'pending' AND not_before <= ? ORDER BY not_before, accepted_at"
            " LIMIT ?",
            (now, limit + len(skip)),
        )
        claims = []
        for key, record, generation, attempts, accepted_at, not_before, due_since in rows:
            if key in skip:
                continue
            claims.append(
                Claim(
                    ObjectKey.parse(str(key)),
                    record_from_json(str(record)),
                    int(generation),
                    int(attempts),
                    float(accepted_at),
                    float(not_before),
                    float(due_since),
                )
            )
        return claims[:limit]

    def _finish(self, claim: Claim, sql: str, *, now: float, **values: object) -> bool:
        """Update the claimed row (``:key``, ``:generation``, ``:now`` and ``values``)."""
        params = {"now": now, "key": str(claim.key), "generation": claim.generation, **values}
        return bool(self._write(sql, params))

    def done(self, claim: Claim, *, now: float) -> bool:
        """Mark the change done, unless a newer trigger arrived meanwhile (then False)."""
        return self._finish(
            claim,
            "UPDATE {q} SET state = 'done', attempts = 0, reason = NULL, updated_at = :now"
            " WHERE key = :key AND generation = :generation",
            now=now,
        )

    def retry(self, claim: Claim, *, now: float, not_before: float, reason: str) -> None:
        """Count a failed attempt; try again no earlier than ``not_before``."""
        self._finish(
            claim,
            "UPDATE {q} SET attempts = attempts + 1, reason = :reason, updated_at = :now,"
            " not_before = CASE WHEN generation = :generation THEN :not_before"
            " ELSE MIN(not_before, :not_before) END WHERE key = :key",
            now=now,
            not_before=not_before,
            reason=reason,
        )

    def schedule(self, claim: Claim, *, now: float, not_before: float, reason: str) -> None:
        """Leave the change pending until ``not_before`` (a rule of AWS's, not a failure)."""
        self._finish(
            claim,
            "UPDATE {q} SET attempts = 0, reason = :reason, updated_at = :now,"
            " not_before = :not_before, due_since = :not_before"
            " WHERE key = :key AND generation = :generation",
            now=now,
            not_before=not_before,
            reason=reason,
        )

    def defer(self, claim: Claim, *, now: float, not_before: float, reason: str) -> None:
        """Try the change again at ``not_before``, not counting an attempt nor resetting them."""
        self._finish(
            claim,
            "UPDATE {q} SET reason = :reason, updated_at = :now, not_before = :not_before"
            " WHERE key = :key AND generation = :generation",
            now=now,
            not_before=not_before,
            reason=reason,
        )

    def dead(self, claim: Claim, *, now: float, reason: str) -> bool:
        """Give up on the change, keeping the reason (unless a newer trigger arrived)."""
        return self._finish(
            claim,
            "UPDATE {q} SET state = 'dead', attempts = attempts + 1, reason = :reason,"
            " updated_at = :now WHERE key = :key AND generation = :generation",
            now=now,
            reason=reason,
        )

    def wake(self, *, now: float) -> int:
        """Make pending changes waiting out a retry backoff due now (a region came back)."""
        return self._write(
            "UPDATE {q} SET not_before = :now"
            " WHERE state = 'pending' AND attempts > 0 AND not_before > :now",
            {"now": now},
        )

    def is_pending(self, key: ObjectKey, *, now: float) -> bool:
        """Whether ``key`` has a change in this queue that is due at ``now`` or failing.

        A change waiting on purpose (a re-check, a scheduled deletion) does not count.
        """
        return bool(
            self._read(
                "SELECT 1 FROM {q} WHERE key = ? AND state = 'pending'"
                " AND (not_before <= ? OR attempts > 0)",
                (str(key), now),
            )
        )

    # -- the service's own state --------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        """A value the service keeps across restarts (``failback_due``...), or None."""
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: str | None, *, now: float) -> None:
        """Keep ``value`` under ``name`` (None: forget it)."""
        if value is None:
            self._write("DELETE FROM meta WHERE name = :name", {"name": name})
        else:
            self._write(
                "INSERT OR REPLACE INTO meta VALUES (:name, :value, :now)",
                {"name": name, "value": value, "now": now},
            )

    # -- reporting --------------------------------------------------------------------------

    def state_of(self, key: ObjectKey) -> tuple[RowState, int, str | None] | None:
        """A row's state, attempts and reason, or None."""
        rows = self._read("SELECT state, attempts, reason FROM {q} WHERE key = ?", (str(key),))
        if not rows:
            return None
        state, attempts, reason = rows[0]
        found: RowState = state
        return found, int(attempts), None if reason is None else str(reason)

    def rows(self, state: RowState) -> Iterator[tuple[ObjectKey, int, str | None]]:
        """The keys in ``state`` with their attempts and reasons."""
        for key, attempts, reason in self._read(
            "SELECT key, attempts, reason FROM {q} WHERE state = ? ORDER BY key", (state,)
        ):
            yield ObjectKey.parse(str(key)), int(attempts), None if reason is None else str(reason)

    def counts(self, now: float) -> JournalCounts:
        """Rows by state, how many are due at ``now``, and the oldest pending row's age."""
        by_state = dict(self._read("SELECT state, count(*) FROM {q} GROUP BY state"))
        due = self._read(
            "SELECT count(*), min(accepted_at) FROM {q}"
            " WHERE state = 'pending' AND not_before <= ?",
            (now,),
        )[0]
        # The oldest change waiting: since it was accepted, or since its planned
        # wait (a re-check, a scheduled deletion) ended; failures do not reset it.
        oldest = self._read(
            "SELECT min(COALESCE(due_since, accepted_at)) FROM {q}"
            " WHERE state = 'pending' AND COALESCE(due_since, accepted_at) <= ?",
            (now,),
        )[0][0]
        letters = self._read("SELECT count(*) FROM dead_letters")[0][0]
        return JournalCounts(
            pending=int(by_state.get("pending", 0)),
            due=int(due[0]),
            done=int(by_state.get("done", 0)),
            dead=int(by_state.get("dead", 0)),
            dead_letters=int(letters),
            oldest_pending_s=max(0.0, now - float(oldest)) if oldest is not None else 0.0,
            dead_letters_pruned=self.dead_letters_pruned(),
        )

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
