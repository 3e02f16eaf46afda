"""The outbox's dead letters: a message set aside leaves the outbox whole and is kept."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from device_agent import Outbox
from device_agent._ports import DeadLetterPort
from device_agent.testing import MemoryOutbox

if TYPE_CHECKING:
    from pathlib import Path


def test_a_dead_letter_leaves_the_outbox_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ticks = iter(range(1, 100))
    with Outbox(path, clock=lambda: float(next(ticks))) as outbox:
        first = outbox.put("dt/a", b"1")
        poison = outbox.put("forbidden/b", b"\x00\xff")
        outbox.put("dt/c", b"3")
        outbox.mark_sent(poison.seq)
        assert outbox.dead_letter(poison.seq, "refused 3 times") is True
        assert outbox.dead_letter(poison.seq, "again") is False  # no longer there
        assert [e.seq for e in outbox.peek()] == [first.seq, poison.seq + 1]
        assert outbox.dead_lettered == 1
    with Outbox(path) as reopened:  # durable
        [(entry, reason)] = reopened.dead_letters()
        assert (entry.seq, entry.topic, entry.payload, entry.attempts) == (
            poison.seq,
            "forbidden/b",
            b"\x00\xff",
            1,
        )
        assert entry.created_at == 2.0
        assert reason == "refused 3 times"
        assert reopened.depth == 2
        assert reopened.ack(poison.seq) is False


def test_an_outbox_file_from_before_dead_letters_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as outbox:
        kept = outbox.put("dt/a", b"1")
    with sqlite3.connect(path) as db:  # as written by an agent before dead letters
        db.execute("DROP TABLE dead_letter")
    with Outbox(path) as outbox:
        assert outbox.dead_lettered == 0
        assert outbox.dead_letter(kept.seq, "refused") is True
        assert outbox.depth == 0


def test_both_outboxes_have_dead_letters() -> None:
    memory = MemoryOutbox()
    assert isinstance(memory, DeadLetterPort)
    entry = memory.put("dt/a", b"1")
    assert memory.dead_letter(entry.seq, "refused") is True
    assert memory.dead_letter(entry.seq, "refused") is False
    assert memory.depth == 0
    assert memory.dead_lettered == 1
    assert [(e.seq, r) for e, r in memory.dead_letters()] == [(entry.seq, "refused")]
    with Outbox(":memory:") as outbox:
        assert isinstance(outbox, DeadLetterPort)
