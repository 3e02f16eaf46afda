"""The durable outbox: order, acks, capacity, durability on reopen, bad files."""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from device_agent._errors import DeviceAgentError, OutboxFullError
from device_agent._outbox import Outbox, OutboxEntry, OutboxError, OverflowPolicy
from device_agent.testing import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    with Outbox(db, clock=FakeClock(1.0, epoch=1_000.0).time) as box:
        yield box


# --- order, peek, ack --------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "memory"])
def test_put_then_peek_in_order(where: str, db: Path) -> None:
    clock = FakeClock(epoch=1_000.0)
    with Outbox(db if where == "file" else ":memory:", clock=clock.time) as box:
        put = []
        for i in range(5):
            clock.advance(1.0)
            put.append(box.put(f"t/{i}", bytes([i])))
        assert box.peek() == put
        assert [e.topic for e in put] == [f"t/{i}" for i in range(5)]
        assert [e.created_at for e in put] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0]
        assert all(e.qos == 1 and e.attempts == 0 for e in put)
        assert box.depth == len(box) == 5


def test_put_returns_what_peek_reads(outbox: Outbox) -> None:
    entry = outbox.put("dt/things/thing-1/telemetry", b'{"t":21.5}', qos=0)
    assert outbox.peek() == [
        OutboxEntry(
            seq=entry.seq,
            topic="dt/things/thing-1/telemetry",
            payload=b'{"t":21.5}',
            qos=0,
            created_at=1001.0,
            attempts=0,
        )
    ]


def test_peek_limit_and_after_seq_page_through(outbox: Outbox) -> None:
    seqs = [outbox.put("t", b"x").seq for _ in range(7)]
    assert [e.seq for e in outbox.peek(3)] == seqs[:3]
    assert [e.seq for e in outbox.peek(3, after_seq=seqs[2])] == seqs[3:6]
    assert [e.seq for e in outbox.peek(100, after_seq=seqs[5])] == seqs[6:]
    assert outbox.peek(100, after_seq=seqs[6]) == []
    assert outbox.peek(0) == []
    assert outbox.depth == 7  # peek removes nothing
    with pytest.raises(ValueError, match="negative"):
        outbox.peek(-1)


def test_ack_removes_once(outbox: Outbox) -> None:
    a, b, c = (outbox.put("t", bytes([i])) for i in range(3))
    assert outbox.ack(b.seq) is True
    assert outbox.ack(b.seq) is False
    assert outbox.ack(9_999) is False
    assert outbox.peek() == [a, c]
    assert outbox.depth == 2


def test_mark_sent_counts_attempts_durably(db: Path) -> None:
    with Outbox(db) as box:
        entry = box.put("t", b"x")
        box.mark_sent(entry.seq)
        box.mark_sent(entry.seq)
        box.mark_sent(12_345)  # not there: no effect, no error
    with Outbox(db) as box:
        assert [e.attempts for e in box.peek()] == [2]


# --- seq ---------------------------------------------------------------------------


def test_seq_grows_across_reopen_and_after_emptying(db: Path) -> None:
    with Outbox(db) as box:
        first = [box.put("t", b"x").seq for _ in range(3)]
        assert first == sorted(first)
        assert len(set(first)) == 3
        for seq in first:
            assert box.ack(seq)
        assert box.depth == 0
        after_empty = box.put("t", b"y").seq
        assert after_empty > first[-1]
        assert box.ack(after_empty)
    with Outbox(db) as box:
        assert box.depth == 0
        assert box.put("t", b"z").seq > after_empty


# --- capacity ----------------------------------------------------------------------


def test_reject_when_full_writes_nothing(db: Path) -> None:
    with Outbox(db, capacity=3) as box:
        kept = [box.put("t", bytes([i])) for i in range(3)]
        with pytest.raises(OutboxFullError) as info:
            box.put("t", b"over")
        assert (info.value.path, info.value.capacity) == (str(db), 3)
        assert isinstance(info.value, DeviceAgentError)
        assert "\n" not in str(info.value)
        assert "full" in str(info.value)
        assert box.peek() == kept
        assert box.dropped == 0
        box.ack(kept[0].seq)
        assert box.put("t", b"room").seq > kept[-1].seq


def test_drop_oldest_when_full_and_count_persists(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(db, capacity=3, overflow="drop_oldest") as box:
        put = [box.put("t", bytes([i])) for i in range(5)]
        assert box.peek() == put[2:]
        assert box.depth == 3
        assert box.dropped == 2
    drops = [r for r in caplog.records if r.getMessage() == "outbox.dropped"]
    assert [r.__dict__["seqs"] for r in drops] == [[put[0].seq], [put[1].seq]]
    with Outbox(db, capacity=3, overflow="drop_oldest") as box:
        assert box.dropped == 2
        box.put("t", b"more")
        assert box.dropped == 3
        assert [e.payload for e in box.peek()] == [b"\x03", b"\x04", b"more"]


def test_reopen_with_smaller_capacity(db: Path) -> None:
    with Outbox(db, capacity=5) as box:
        for i in range(5):
            box.put("t", bytes([i]))
    with Outbox(db, capacity=2) as box, pytest.raises(OutboxFullError):
        box.put("t", b"new")
    with Outbox(db, capacity=2, overflow="drop_oldest") as box:
        box.put("t", b"new")
        assert [e.payload for e in box.peek()] == [b"\x04", b"new"]
        assert box.dropped == 4


def test_full_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(OutboxFullError("/x/outbox.db", 7)))
    assert (error.path, error.capacity, str(error)) == (
        "/x/outbox.db",
        7,
        str(OutboxFullError("/x/outbox.db", 7)),
    )


# --- payloads and arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", bytes(range(256)), b"\xff\xfe\x00invalid utf-8\x80", os.urandom(256 * 1024)],
    ids=["empty", "nul", "all-bytes", "not-utf8", "256KiB"],
)
def test_payload_round_trips_exactly(db: Path, payload: bytes) -> None:
    with Outbox(db) as box:
        box.put("t", payload)
    with Outbox(db) as box:
        (entry,) = box.peek()
        assert type(entry.payload) is bytes
        assert entry.payload == payload


_topics = st.text(st.characters(codec="utf-8", exclude_characters="+#\x00"), min_size=1)


@settings(max_examples=50)
@given(topic=_topics, payload=st.binary(), qos=st.integers(0, 2))
def test_any_message_round_trips(topic: str, payload: bytes, qos: int) -> None:
    with Outbox(":memory:") as box:
        entry = box.put(topic, payload, qos)
        assert box.peek() == [entry]
        assert (entry.topic, entry.payload, entry.qos) == (topic, payload, qos)


@pytest.mark.parametrize(
    ("topic", "payload", "qos", "error"),
    [
        ("", b"x", 1, ValueError),
        ("a/+/b", b"x", 1, ValueError),
        ("a/#", b"x", 1, ValueError),
        ("a\x00b", b"x", 1, ValueError),
        ("a\ud800", b"x", 1, ValueError),
        ("t" * 65_536, b"x", 1, ValueError),
        ("t", b"x", 3, ValueError),
        ("t", b"x", -1, ValueError),
        ("t", "text", 1, TypeError),
        ("t", bytearray(b"x"), 1, TypeError),
    ],
)
def test_bad_messages_are_refused(
    outbox: Outbox, topic: str, payload: object, qos: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        outbox.put(topic, payload, qos)  # type: ignore[arg-type]
    assert outbox.depth == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity": 0}, {"overflow": "drop_newest"}, {"synchronous": "off"}],
)
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Outbox(":memory:", **kwargs)  # type: ignore[arg-type]


# --- the file ------------------------------------------------------------------------


@posix_only
def test_new_file_and_folder_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "iotdr" / "outbox.db"
    with Outbox(path) as box:
        box.put("t", b"secret")
        assert path.stat().st_mode & 0o777 == 0o600
        # SQLite gives the write-ahead log the database file's mode.
        assert Path(f"{path}-wal").stat().st_mode & 0o777 == 0o600


def test_wal_mode_and_synchronous(db: Path) -> None:
    with Outbox(db) as box:
        assert box._conn is not None
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with Outbox(db, synchronous="normal") as box:
        assert box._conn is not None
        assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    # WAL mode is recorded in the file, so a fresh connection sees it too.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused(db: Path) -> None:
    db.write_bytes(b"this is a log file, not a database\n" * 200)
    with pytest.raises(OutboxError, match="not an outbox database") as info:
        Outbox(db)
    assert info.value.path == str(db)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, DeviceAgentError)


def test_another_sqlite_database_is_refused_and_left_alone(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(OutboxError, match="not an outbox database"):
        Outbox(db)
    assert db.read_bytes() == before  # in particular, not switched to WAL mode


def test_a_newer_schema_is_refused(db: Path) -> None:
    Outbox(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(OutboxError, match="schema version 99"):
        Outbox(db)


def test_an_empty_file_becomes_an_outbox(db: Path) -> None:
    db.touch()
    with Outbox(db) as box:
        assert box.put("t", b"x").seq == 1


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_a_path_that_cannot_be_a_file_is_refused(tmp_path: Path, where: str) -> None:
    if where == "folder":
        path = tmp_path
    else:
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / "outbox.db"
    with pytest.raises(OutboxError, match="cannot") as info:
        Outbox(path)
    assert "\n" not in str(info.value)


def test_database_errors_become_outbox_errors(outbox: Outbox) -> None:
    outbox.put("t", b"x")
    assert outbox._conn is not None
    outbox._conn.execute("DROP TABLE outbox_meta")  # what a damaged file might look like
    with pytest.raises(OutboxError, match="cannot read the dropped count") as info:
        _ = outbox.dropped
    assert isinstance(info.value.__cause__, sqlite3.Error)
    outbox._conn.execute("DROP TABLE outbox")
    with pytest.raises(OutboxError, match="cannot put"):
        outbox.put("t", b"y")
    assert not outbox._conn.in_transaction  # rolled back, ready for the next call


# --- lifecycle -----------------------------------------------------------------------


def test_closed_outbox_refuses_calls(db: Path) -> None:
    box = Outbox(db)
    box.close()
    box.close()  # idempotent
    assert "closed" in repr(box)
    with pytest.raises(OutboxError, match="closed"):
        box.put("t", b"x")
    with pytest.raises(OutboxError, match="closed"):
        box.peek()
    with pytest.raises(OutboxError, match="closed"):
        _ = box.depth


def test_repr_names_path_depth_capacity(db: Path) -> None:
    with Outbox(db, capacity=42) as box:
        box.put("t", b"x")
        text = repr(box)
    assert str(db) in text
    assert "depth=1" in text
    assert "capacity=42" in text


def test_threads_share_one_outbox() -> None:
    with Outbox(":memory:", capacity=1_000) as box:

        def producer(n: int) -> None:
            for i in range(50):
                box.put(f"t/{n}", i.to_bytes(2, "big"))

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        entries = box.peek(1_000)
        assert len(entries) == box.depth == 200
        assert [e.seq for e in entries] == sorted({e.seq for e in entries})
        for n in range(4):  # each producer's messages stay in its order
            mine = [e.payload for e in entries if e.topic == f"t/{n}"]
            assert mine == [i.to_bytes(2, "big") for i in range(50)]


# --- a model ----------------------------------------------------------------------------


class OutboxModel(RuleBasedStateMachine):
    """The outbox against a list: FIFO, no loss, no duplicates, across reopens."""

    CAPACITY = 3  # small, so that both overflow policies come into play
    seqs = Bundle("seqs")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="outbox-model-")
        self.path = Path(self.folder) / "outbox.db"
        self.clock = FakeClock()
        self.overflow: OverflowPolicy = "reject"
        self.box: Outbox | None = None
        self.waiting: list[OutboxEntry] = []  # what the outbox should hold, in order
        self.put_seqs: list[int] = []
        self.acked: list[int] = []
        self.dropped: list[int] = []

    def _open(self) -> Outbox:
        # "normal" keeps fsyncs out of a test of logic; durability is the kill -9 test's.
        return Outbox(
            self.path,
            capacity=self.CAPACITY,
            overflow=self.overflow,
            synchronous="normal",
            clock=self.clock.time,
        )

    @property
    def outbox(self) -> Outbox:
        assert self.box is not None
        return self.box

    @initialize(overflow=st.sampled_from(["reject", "drop_oldest"]))
    def open(self, overflow: OverflowPolicy) -> None:
        self.overflow = overflow
        self.box = self._open()

    @rule(target=seqs, topic=st.sampled_from(["a", "b/c"]), payload=st.binary(max_size=16))
    def put(self, topic: str, payload: bytes) -> int | MultipleResults[int]:
        if len(self.waiting) >= self.CAPACITY and self.overflow == "reject":
            with pytest.raises(OutboxFullError):
                self.outbox.put(topic, payload)
            return multiple()  # no seq to remember
        self.clock.advance(1.0)  # each put at a time of its own
        entry = self.outbox.put(topic, payload)
        assert all(entry.seq > seq for seq in self.put_seqs)
        assert (entry.topic, entry.payload, entry.created_at) == (topic, payload, self.clock.time())
        if len(self.waiting) >= self.CAPACITY:
            self.dropped.append(self.waiting.pop(0).seq)
        self.waiting.append(entry)
        self.put_seqs.append(entry.seq)
        return entry.seq

    @rule(seq=seqs)
    def ack_a_seq_it_gave(self, seq: int) -> None:
        self._ack(seq)

    @rule(seq=st.integers(-3, 40))
    def ack_any_seq(self, seq: int) -> None:
        self._ack(seq)

    def _ack(self, seq: int) -> None:
        expected = any(e.seq == seq for e in self.waiting)
        assert self.outbox.ack(seq) is expected
        if expected:
            self.waiting = [e for e in self.waiting if e.seq != seq]
            self.acked.append(seq)

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def mark_sent(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.waiting) - 1))
        entry = self.waiting[index]
        self.outbox.mark_sent(entry.seq)
        self.waiting[index] = OutboxEntry(
            entry.seq, entry.topic, entry.payload, entry.qos, entry.created_at, entry.attempts + 1
        )

    @rule(limit=st.integers(0, 8), after=st.integers(0, 40))
    def peek(self, limit: int, after: int) -> None:
        expected = [e for e in self.waiting if e.seq > after][:limit]
        assert self.outbox.peek(limit, after_seq=after) == expected

    @rule()
    def reopen(self) -> None:
        self.outbox.close()
        self.box = self._open()

    @invariant()
    def holds_exactly_the_waiting_in_put_order(self) -> None:
        if self.box is None:
            return
        assert self.outbox.peek(limit=100) == self.waiting
        assert self.outbox.depth == len(self.outbox) == len(self.waiting)
        assert self.outbox.dropped == len(self.dropped)

    @invariant()
    def every_put_is_acked_once_dropped_or_waiting(self) -> None:
        waiting = [e.seq for e in self.waiting]
        fates = sorted(self.acked + self.dropped + waiting)
        assert fates == sorted(self.put_seqs)  # each exactly once: no loss, no duplicate

    def teardown(self) -> None:
        if self.box is not None:
            self.box.close()
        shutil.rmtree(self.folder, ignore_errors=True)


OutboxModel.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestOutboxModel = OutboxModel.TestCase
