"""The durable outbox: QoS 1 publishes kept on disk until their PUBACK.

Theory of operation: the agent calls :meth:`Outbox.put` before it hands a
message to the MQTT client, and :meth:`Outbox.ack` when the broker's PUBACK
arrives. After every (re)connect, in either region, it replays
:meth:`Outbox.peek` in ``seq`` order, calling :meth:`Outbox.mark_sent` for each
message it sends again. A message therefore leaves the outbox only by its PUBACK
or, under the ``"drop_oldest"`` overflow policy, by being pushed out by a newer
one (counted in :attr:`Outbox.dropped`), or by :meth:`Outbox.dead_letter`,
which sets aside a message the broker keeps refusing (moved, whole, to the
``dead_letter`` table, where it stays for an operator); delivery is at least
once.

The store is one SQLite file in write-ahead-log mode. Every change is its own
transaction, committed before the method returns, so a process killed with
SIGKILL loses nothing that a call had returned for. ``synchronous="full"`` (the
default) also syncs the log on each commit, so a power cut loses nothing
either; ``"normal"`` skips that sync, which is still safe against a killed
process and is meant for simulations running many agents on one disk.
The ``dead_letter`` table is created on open when missing (files written
before it existed gain it; older agents ignore it), so the schema version
stays 1. ``seq`` comes from ``AUTOINCREMENT``: it only grows, even across restarts and
after the outbox empties, so a replay can never confuse a new message with an
old one. ``PRAGMA application_id`` marks the file as an outbox, so a wrong path
fails at once instead of writing into somebody else's database.

The module imports only the standard library (it runs in device firmware) and
reads no clock but the injected ``clock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Self

from device_agent._errors import OutboxError, OutboxFullError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

__all__ = [
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "OutboxFullError",
    "OverflowPolicy",
    "Synchronous",
]

logger = logging.getLogger(__name__)

OverflowPolicy = Literal["reject", "drop_oldest"]
Synchronous = Literal["full", "normal"]

_MEMORY: Final = ":memory:"
_APPLICATION_ID: Final = 0x696F7464  # "iotd"
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = (
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO outbox_meta (key, value) VALUES ('dropped', 0)",
    f"PRAGMA application_id = {_APPLICATION_ID}",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)
_SYNCHRONOUS: Final[dict[str, str]] = {
    "full": "PRAGMA synchronous = FULL",
    "normal": "PRAGMA synchronous = NORMAL",
}
# Added after version 1 shipped: created on open, so older files gain it.
_DEAD_LETTER_SCHEMA: Final = """CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
)"""
_PEEK: Final = (
    "SELECT seq, topic, payload, qos, created_at, attempts FROM outbox"
    " WHERE seq > ? ORDER BY seq LIMIT ?"
)
_MAX_TOPIC_BYTES: Final = 65_535


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message waiting for its PUBACK.

    Attributes:
        seq: Its place in the outbox; strictly increasing, never reused.
        topic: The MQTT topic to publish to.
        payload: The message body, exactly as given to :meth:`Outbox.put`.
        qos: The MQTT QoS to publish with.
        created_at: When it was put, from the outbox's clock.
        attempts: How many times :meth:`Outbox.mark_sent` was called for it.
    """

    seq: int
    topic: str
    payload: bytes
    qos: int
    created_at: float
    attempts: int


class Outbox:
    """A bounded, durable FIFO of outgoing MQTT messages in one SQLite file.

    Safe to share between threads (one lock serialises every call), but one
    process should own a file at a time: two agents replaying the same outbox
    would publish every message twice. Note that ``len()`` makes an empty
    outbox falsy; test ``outbox is not None`` rather than ``outbox``.

    Args:
        path: The database file, created with its parent folder if missing
            (mode 0600: payloads may be private); ``":memory:"`` for tests.
        capacity: The most messages it holds.
        overflow: What :meth:`put` does when full: ``"reject"`` raises
            :class:`OutboxFullError`; ``"drop_oldest"`` deletes the oldest
            messages to make room and counts them in :attr:`dropped`.
        synchronous: ``"full"`` survives a power cut; ``"normal"`` only a
            killed process (for simulations).
        clock: Gives the ``created_at`` of each new message.

    Raises:
        OutboxError: The file cannot be created or opened, or is not an outbox.
        ValueError: An argument is out of range.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        capacity: int = 10_000,
        overflow: OverflowPolicy = "reject",
        synchronous: Synchronous = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be at least 1, not {capacity}")
        if overflow not in {"reject", "drop_oldest"}:
            raise ValueError(f"overflow must be 'reject' or 'drop_oldest', not {overflow!r}")
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self._path = str(path)
        self._capacity = capacity
        self._overflow: OverflowPolicy = overflow
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _connect(self._path, synchronous)
        logger.debug("outbox.opened", extra={"outbox": self._path, "depth": self.depth})

    @property
    def path(self) -> str:
        """Where the outbox lives."""
        return self._path

    @property
    def capacity(self) -> int:
        """The most messages the outbox holds."""
        return self._capacity

    @property
    def depth(self) -> int:
        """How many messages are waiting for their PUBACK."""
        with self._reading("count") as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @property
    def dropped(self) -> int:
        """How many messages ``"drop_oldest"`` has discarded, ever, in this file."""
        with self._reading("read the dropped count") as conn:
            row = conn.execute("SELECT value FROM outbox_meta WHERE key = 'dropped'").fetchone()
        return int(row[0])

    @property
    def dead_lettered(self) -> int:
        """How many messages :meth:`dead_letter` has set aside and are still kept."""
        with self._reading("count dead letters") as conn:
            return int(conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0])

    def __len__(self) -> int:
        return self.depth

    def put(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        """Store a message, committed before this returns (and synced, if ``"full"``).

        Args:
            topic: The MQTT topic: 1 to 65535 bytes of UTF-8, no wildcards.
            payload: The message body; any bytes, including none.
            qos: The MQTT QoS (0 to 2). The outbox itself is for QoS 1; the
                caller acks other messages once they are sent.

        Returns:
            The stored entry, with its new ``seq``.

        Raises:
            OutboxFullError: The outbox is full and its policy is ``"reject"``;
                nothing was written.
            OutboxError: The database could not be written.
            ValueError: The topic or QoS is invalid.
            TypeError: The payload is not ``bytes``.
        """
        _check_message(topic, payload, qos)
        created_at = self._clock()
        dropped: list[int] = []
        with self._transaction("put") as conn:
            depth = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
            if depth >= self._capacity:
                if self._overflow == "reject":
                    raise OutboxFullError(self._path, self._capacity)
                # More than one only when the file was reopened with a smaller capacity.
                dropped = _drop_oldest(conn, depth - self._capacity + 1)
            cursor = conn.execute(
                "INSERT INTO outbox (topic, payload, qos, created_at) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, created_at),
            )
            seq = cursor.lastrowid
        if dropped:
            logger.warning(
                "outbox.dropped", extra={"outbox": self._path, "seqs": dropped, "for_seq": seq}
            )
        assert seq is not None  # an INSERT into a rowid table always sets it
        return OutboxEntry(seq, topic, payload, qos, created_at, 0)

    def peek(self, limit: int = 100, *, after_seq: int = 0) -> list[OutboxEntry]:
        """The oldest waiting messages, oldest first, without removing them.

        Args:
            limit: The most entries to return.
            after_seq: Return only entries with a larger ``seq``, to page
                through a replay.

        Returns:
            Up to ``limit`` entries in ``seq`` order.

        Raises:
            OutboxError: The database could not be read.
            ValueError: ``limit`` is negative.
        """
        if limit < 0:
            raise ValueError(f"peek limit must not be negative, not {limit}")
        with self._reading("peek") as conn:
            rows = conn.execute(_PEEK, (after_seq, limit)).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def mark_sent(self, seq: int) -> None:
        """Count one more send of a message; no effect if it is no longer here.

        Raises:
            OutboxError: The database could not be written.
        """
        with self._transaction("mark sent") as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def ack(self, seq: int) -> bool:
        """Remove a message whose PUBACK has arrived.

        Returns:
            True if it was in the outbox; False if it was not (already acked,
            dropped, or never there), so a duplicate PUBACK is harmless.

        Raises:
            OutboxError: The database could not be written.
        """
        with self._transaction("ack") as conn:
            return conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount == 1

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Set a message aside: it leaves the outbox for the ``dead_letter`` table, whole.

        For a message the broker keeps refusing (it drops the connection on
        that publish): replaying it after every reconnect would loop forever.

        Returns:
            True if it was in the outbox; False if it was not (acked meanwhile).

        Raises:
            OutboxError: The database could not be written.
        """
        with self._transaction("dead-letter") as conn:
            moved = conn.execute(
                "INSERT INTO dead_letter (seq, topic, payload, qos, created_at, attempts, reason,"
                " dead_at) SELECT seq, topic, payload, qos, created_at, attempts, ?, ?"
                " FROM outbox WHERE seq = ?",
                (reason, self._clock(), seq),
            ).rowcount
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        return moved == 1

    def dead_letters(self, limit: int = 100) -> list[tuple[OutboxEntry, str]]:
        """The messages set aside, oldest first, each with the reason it was.

        Raises:
            OutboxError: The database could not be read.
        """
        with self._reading("read dead letters") as conn:
            rows = conn.execute(
                "SELECT seq, topic, payload, qos, created_at, attempts, reason FROM dead_letter"
                " ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [(OutboxEntry(*row[:6]), str(row[6])) for row in rows]

    def close(self) -> None:
        """Close the database; later calls raise :class:`OutboxError`. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed"
        if self._conn is not None:
            try:
                state = f"depth={self.depth}"
            except OutboxError:  # a repr must not raise; closed meanwhile, or a disk error
                state = "depth=?"
        return (
            f"<Outbox path={self._path!r} {state} capacity={self._capacity} "
            f"overflow={self._overflow!r}>"
        )

    @contextlib.contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise OutboxError(self._path, f"cannot {doing}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so the capacity check
        # in put() and its insert see the same table.
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise OutboxError(self._path, f"cannot {doing}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(self._path, "the outbox is closed")
        return self._conn


def _check_message(topic: str, payload: bytes, qos: int) -> None:
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if qos not in {0, 1, 2}:
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
    if not topic or any(c in topic for c in "+#\x00"):
        raise ValueError(f"not a topic to publish to: {topic!r}")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"topic is not valid UTF-8: {topic!r}") from None
    if size > _MAX_TOPIC_BYTES:
        raise ValueError(f"topic is {size} bytes; MQTT allows {_MAX_TOPIC_BYTES}")


def _drop_oldest(conn: sqlite3.Connection, count: int) -> list[int]:
    seqs = [
        int(row[0]) for row in conn.execute("SELECT seq FROM outbox ORDER BY seq LIMIT ?", (count,))
    ]
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (seqs[-1],))
    conn.execute("UPDATE outbox_meta SET value = value + ? WHERE key = 'dropped'", (len(seqs),))
    return seqs


def _rollback(conn: sqlite3.Connection) -> None:
    # After some I/O errors SQLite has already rolled back; a failing ROLLBACK
    # must not hide the error that caused it.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _connect(path: str, synchronous: Synchronous) -> sqlite3.Connection:
    if path != _MEMORY:
        _create_private_file(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise OutboxError(path, f"cannot open: {exc}") from exc
    try:
        _prepare(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private_file(path: str) -> None:
    """Create the file with mode 0600 before SQLite does, which would use 0644.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
    """
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutboxError(path, f"cannot create its folder: {exc.strerror or exc}") from exc
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with contextlib.suppress(OSError):  # an older file: payloads may be private
            os.chmod(file, 0o600)
        return
    except OSError as exc:
        raise OutboxError(path, f"cannot create: {exc.strerror or exc}") from exc
    os.close(fd)
    # Make the new name itself survive a power cut, not only its contents.
    with contextlib.suppress(OSError):  # some platforms cannot open a folder
        dir_fd = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _prepare(conn: sqlite3.Connection, path: str, synchronous: Synchronous) -> None:
    try:
        # Identify the file before changing anything in it: switching a
        # stranger's database to WAL mode would be a lasting change.
        is_new = not _is_outbox(conn, path)
        _switch_to_wal(conn, path)
        conn.execute(_SYNCHRONOUS[synchronous])
        if is_new:
            _create_schema(conn)
        conn.execute(_DEAD_LETTER_SCHEMA)
    except sqlite3.OperationalError as exc:
        raise OutboxError(path, f"cannot open: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise OutboxError(path, f"not an outbox database ({exc})") from exc


def _is_outbox(conn: sqlite3.Connection, path: str) -> bool:
    """True for an outbox, False for an empty database; raises for anything else."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if application_id == _APPLICATION_ID:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != _SCHEMA_VERSION:
            raise OutboxError(
                path, f"outbox schema version {version} is not {_SCHEMA_VERSION}, the one it reads"
            )
        return True
    if application_id != 0:
        raise OutboxError(path, f"not an outbox database (application id {application_id:#x})")
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise OutboxError(path, "not an outbox database (it holds other tables)")
    return False


def _switch_to_wal(conn: sqlite3.Connection, path: str) -> None:
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if mode != "wal" and path != _MEMORY:  # an in-memory database reports "memory"
        raise OutboxError(path, f"cannot use write-ahead logging (journal mode stays {mode})")


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created it since _is_outbox() looked.
        if conn.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:
            for statement in _SCHEMA:
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
