"""The journal: one row per object, generations, retries, schedules, dead letters, sync points."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from replicator._errors import JournalError
from replicator.core._records import DeadLetter, ObjectNamed, ThingChanged
from replicator.core._state import ObjectKey
from replicator.runtime._journal import Journal

if TYPE_CHECKING:
    from pathlib import Path

EAST = "us-east-1"
T1 = ObjectKey.thing("t1")


def changed(name: str = "t1", op: str = "UPDATED") -> ThingChanged:
    return ThingChanged(region=EAST, thing_name=name, operation=op)  # type: ignore[arg-type]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.db")


def test_many_triggers_for_one_object_collapse_into_one_row(journal: Journal) -> None:
    for _ in range(5):
        journal.accept(changed(), now=10.0)
    journal.accept(changed("t2"), now=11.0)
    claims = journal.claim(now=20.0, limit=10)
    assert [c.key for c in claims] == [T1, ObjectKey.thing("t2")]
    assert claims[0].generation == 5
    assert journal.counts(20.0).pending == 2


def test_a_trigger_during_apply_is_not_lost_under_done(journal: Journal) -> None:
    journal.accept(changed(), now=1.0)
    [claim] = journal.claim(now=1.0, limit=1)
    journal.accept(changed(op="DELETED"), now=2.0)  # arrives while the engine applies
    assert not journal.done(claim, now=3.0)
    [again] = journal.claim(now=3.0, limit=1)
    assert again.record == changed(op="DELETED")
    assert journal.done(again, now=4.0)
    assert journal.claim(now=5.0, limit=1) == []
    assert journal.state_of(T1) == ("done", 0, None)


def test_retry_waits_and_counts_attempts(journal: Journal) -> None:
    journal.accept(changed(), now=1.0)
    [claim] = journal.claim(now=1.0, limit=1)
    journal.retry(claim, now=1.0, not_before=30.0, reason="region down")
    assert journal.claim(now=29.0, limit=1) == []
    journal.accept(changed(), now=5.0)  # a new trigger does not undo the backoff
    assert journal.claim(now=29.0, limit=1) == []
    [later] = journal.claim(now=30.0, limit=1)
    assert later.attempts == 1
    assert journal.state_of(T1) == ("pending", 1, "region down")
    assert journal.counts(10.0).oldest_pending_s == 9.0


def test_schedule_and_dead(journal: Journal) -> None:
    journal.accept(changed(), now=1.0)
    [claim] = journal.claim(now=1.0, limit=1)
    journal.schedule(claim, now=1.0, not_before=301.0, reason="deprecated < 5 min ago")
    assert journal.claim(now=300.0, limit=1) == []
    [due] = journal.claim(now=301.0, limit=1)
    assert journal.dead(due, now=302.0, reason="nope")
    assert list(journal.rows("dead")) == [(T1, 1, "nope")]
    journal.accept(changed(), now=400.0)  # new evidence revives it
    assert journal.state_of(T1) == ("pending", 0, None)


def test_claim_skips_excluded_keys(journal: Journal) -> None:
    for name in ("a", "b", "c"):
        journal.accept(changed(name), now=1.0)
    claims = journal.claim(now=2.0, limit=2, exclude=[ObjectKey.thing("a")])
    assert [c.key.name for c in claims] == ["b", "c"]


def test_dead_letters_keep_the_reason(journal: Journal) -> None:
    journal.dead_letter(
        DeadLetter("$aws/events/thing/x/created", "{bad", "payload is not JSON"), now=5.0
    )
    [letter] = journal.dead_letters()
    assert (letter.topic, letter.reason) == ("$aws/events/thing/x/created", "payload is not JSON")
    assert journal.counts(5.0).dead_letters == 1


def test_shadow_sync_points(journal: Journal) -> None:
    key = ObjectKey.for_shadow("t1", "cfg")
    assert journal.shadow_sync(key) is None
    journal.set_shadow_sync(key, source=(EAST, 5), target=("us-west-2", 3), now=1.0)
    assert journal.shadow_sync(key) == (EAST, 5, "us-west-2", 3)
    journal.forget_shadow_sync(key)
    assert journal.shadow_sync(key) is None


def test_the_journal_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as first:
        first.accept(ObjectNamed(region=EAST, key=T1), now=1.0)
    with Journal(path) as second:
        [claim] = second.claim(now=2.0, limit=5)
        assert claim.key == T1
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_not_a_journal_and_closed_are_clear_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE x (y)")
    with pytest.raises(JournalError, match="not a replicator journal"):
        Journal(other)
    journal = Journal(tmp_path / "j.db")
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.accept(changed(), now=1.0)
    with pytest.raises(JournalError, match="journal"):
        Journal(tmp_path / "missing" / "j.db")


def test_a_journal_from_before_due_times_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA application_id={0x696F7472}")
        conn.execute(
            "CREATE TABLE changes (key TEXT PRIMARY KEY, record TEXT NOT NULL, state TEXT NOT"
            " NULL, generation INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, not_before"
            " REAL NOT NULL, accepted_at REAL NOT NULL, updated_at REAL NOT NULL, reason TEXT)"
        )
        record = '{"type": "ObjectNamed", "region": "us-east-1", "key": "thing/t1"}'
        conn.execute(
            "INSERT INTO changes VALUES ('thing/t1', ?, 'pending', 1, 0, 5.0, 5.0, 5.0, NULL)",
            (record,),
        )
        waiting = record.replace("t1", "t2")  # a planned wait (a re-check) until 900
        conn.execute(
            "INSERT INTO changes VALUES ('thing/t2', ?, 'pending', 1, 0, 900.0, 5.0, 5.0, NULL)",
            (waiting,),
        )
    with Journal(path) as journal, Journal(path) as second:  # opened twice: one migration
        assert journal.counts(15.0).oldest_pending_s == 10.0
        [claim] = journal.claim(now=15.0, limit=5)
        assert claim.due_since == 5.0
        journal.done(claim, now=15.0)
        assert second.counts(15.0).oldest_pending_s == 0.0  # t2 waits on purpose
