"""The outboxes of one device host: one SQLite file for all its devices, writes batched.

A real device has one outbox on its own flash; a host of 5,000 virtual devices
with one SQLite file each holds four file descriptors per device (the database,
its WAL, its shared memory, the socket besides) and commits once per message.
At 10,000 devices that is the process's file limit and most of its CPU. So a
host keeps its devices' outboxes in one file, each device's messages under its
name, and commits in groups:

* every device has a :class:`DeviceOutbox` (an
  :class:`~device_agent.OutboxPort`), held in memory, which the agent reads
  (``peek``) without touching the disk;
* ``put`` and ``ack`` are queued and written by :meth:`HostOutboxes.flush`
  every ``flush_interval_s`` in one transaction; a message acked before the
  next flush is never written at all (most of them, while connected);
* at start, a device's outbox is loaded from the file: what a previous host
  process left unacknowledged is sent again, in order, with its ``seq``.

What this trades: a crash of the host process loses what was put in the last
``flush_interval_s`` (50 ms by default); the per-device SQLite outbox of the
agent (``synchronous=normal``) loses what the OS had not written. Neither is
what the simulator measures: messages are counted from what the devices
publish and the cloud receives, and the run keeps its hosts alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import TYPE_CHECKING

from device_agent import OutboxEntry, OutboxError
from device_agent.testing import MemoryOutbox

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["DeviceOutbox", "HostOutboxes"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID
"""


class HostOutboxes:
    """One SQLite file holding the outboxes of every device of a host.

    Args:
        path: the file (created 0600 with its folder).
        flush_interval_s: how often queued writes are committed (one transaction).
        capacity: the most messages one device's outbox holds.
        clock: gives ``created_at``.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 0.05,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.capacity = capacity
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(str(path), f"cannot open the host's outbox file: {exc}") from exc
        self._puts: dict[tuple[str, int], OutboxEntry] = {}
        self._acks: list[tuple[str, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.flushes = 0
        self.written = 0

    def __repr__(self) -> str:
        return f"HostOutboxes({str(self.path)!r}, queued={len(self._puts) + len(self._acks)})"

    def open(self, device: str) -> DeviceOutbox:
        """``device``'s outbox, with what the file holds for it."""
        conn = self._connection()
        rows = conn.execute(
            "SELECT seq, topic, payload, qos, created_at FROM outbox WHERE device = ? ORDER BY seq",
            (device,),
        ).fetchall()
        entries = [
            OutboxEntry(int(s), str(t), bytes(p), int(q), float(c), 0) for s, t, p, q, c in rows
        ]
        return DeviceOutbox(self, device, entries)

    def start(self) -> None:
        """Flush every ``flush_interval_s`` on the running loop (until :meth:`close`)."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self._timer = None
            try:
                self.flush()
            except OutboxError:
                logger.exception("host_outbox.flush_failed")
            if self._conn is not None:
                self._timer = loop.call_later(self.flush_interval_s, tick)

        self._timer = loop.call_later(self.flush_interval_s, tick)

    def queue_put(self, device: str, entry: OutboxEntry) -> None:
        """Write ``entry`` at the next flush."""
        self._puts[(device, entry.seq)] = entry

    def queue_ack(self, device: str, seq: int) -> None:
        """Delete ``seq`` at the next flush (or never write it, if it is still queued)."""
        if self._puts.pop((device, seq), None) is None:
            self._acks.append((device, seq))

    def flush(self) -> None:
        """Commit the queued writes in one transaction.

        Raises:
            OutboxError: the file could not be written (the writes stay queued).
        """
        if not self._puts and not self._acks:
            return
        conn = self._connection()
        puts = [
            (device, e.seq, e.topic, e.payload, e.qos, e.created_at)
            for (device, _), e in self._puts.items()
        ]
        try:
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM outbox WHERE device = ? AND seq = ?", self._acks)
            conn.executemany("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)", puts)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise OutboxError(str(self.path), f"cannot write the host's outbox: {exc}") from exc
        self.flushes += 1
        self.written += len(puts)
        self._puts.clear()
        self._acks.clear()

    def close(self) -> None:
        """Flush what is queued and close the file; idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is None:
            return
        try:
            self.flush()
        finally:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(str(self.path), "closed")
        return self._conn


class DeviceOutbox(MemoryOutbox):
    """One device's outbox in a host's shared file (an :class:`~device_agent.OutboxPort`).

    A :class:`~device_agent.testing.MemoryOutbox` (reads come from memory) whose
    ``put`` and ``ack`` also reach the file at the host's next flush.
    """

    def __init__(self, host: HostOutboxes, device: str, entries: list[OutboxEntry]) -> None:
        super().__init__(capacity=host.capacity, clock=host.clock, entries=entries)
        self._host = host
        self.device = device

    def __repr__(self) -> str:
        return f"DeviceOutbox({self.device!r}, depth={self.depth})"

    def put(self, topic: str, payload: bytes, qos: int = 1) -> OutboxEntry:
        """Store a message (in memory now, in the file at the next flush).

        Raises:
            OutboxFullError: it holds the host's ``capacity`` messages.
            OutboxError: it was closed.
        """
        entry = super().put(topic, payload, qos)
        self._host.queue_put(self.device, entry)
        return entry

    def ack(self, seq: int) -> bool:
        """Remove ``seq``; False if it was not there."""
        if not super().ack(seq):
            return False
        self._host.queue_ack(self.device, seq)
        return True
