"""Dead letters and dead changes: kept with their reasons, bounded, listed, replayed, purged.

Two kinds of dead things live in the journal. *Dead letters* are messages the
feed could not parse (the ``dead_letters`` table, shared by the queues of a
journal file, holding the topic and an excerpt of the payload). *Dead changes*
are rows of a queue that kept failing (``state = 'dead'``). The table of dead
letters is bounded: past ``max_dead_letters`` the oldest are pruned, and how
many were is kept in the ``meta`` table (a metric says so), so that a stream of
garbage cannot fill the disk. ``iotdr replicator dead-letters`` lists, replays
and purges both. A mixin of :class:`~replicator.runtime._journal.Journal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from replicator._errors import ReplicatorError
from replicator.core._records import DeadLetter, Ignored, excerpt, unparseable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from replicator.core._records import Record
    from replicator.core._state import ObjectKey

__all__ = ["DEAD_LETTERS_PRUNED", "DeadLetterRow", "DeadLetters"]

DEAD_LETTERS_PRUNED: Final = "dead_letters_pruned"
"""The ``meta`` entry: how many of the oldest dead letters were pruned in all."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A message that could not be parsed, as kept (``id`` names it for a replay or purge)."""

    received_at: float
    topic: str
    payload: str
    reason: str
    id: int = 0


class DeadLetters:
    """The journal's dead letters (bounded) and its queue's dead changes."""

    max_dead_letters: int = 10_000

    def _write(self, sql: str, rows: Iterable[Mapping[str, object]] | Mapping[str, object]) -> int:
        raise NotImplementedError  # the journal's

    def _read(self, sql: str, params: dict[str, object] | tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError  # the journal's

    def accept(self, record: Record, *, now: float) -> list[ObjectKey]:
        raise NotImplementedError  # the journal's

    def journal_parsed(
        self, parsed: Record | DeadLetter | Ignored, *, topic: str, raw: bytes | str, now: float
    ) -> tuple[Record | DeadLetter | Ignored, tuple[ObjectKey, ...]]:
        """Journal what the parser made of a message (``topic``, ``raw``): (it, the keys accepted).

        A record is accepted; a dead letter is kept, and so is a record the
        journal cannot hold for anything but a journal failure (it comes back
        as a dead letter); an ignored message is left alone.

        Raises:
            ReplicatorError: the journal could not commit (the message must come again).
        """
        if isinstance(parsed, Ignored):
            return parsed, ()
        if not isinstance(parsed, DeadLetter):
            try:
                return parsed, tuple(self.accept(parsed, now=now))
            except ReplicatorError:
                raise
            except Exception as exc:  # noqa: BLE001 - a record the journal cannot hold
                parsed = DeadLetter(topic, excerpt(raw), unparseable(exc))
        self.dead_letter(parsed, now=now)
        return parsed, ()

    def dead_letter(self, letter: DeadLetter, *, now: float) -> None:
        """Keep a message that could not be parsed, with the reason; prune past the bound."""
        self._write(
            "INSERT INTO dead_letters (received_at, topic, payload, reason)"
            " VALUES (:now, :topic, :payload, :reason)",
            {  # storable text whatever the message held (lone surrogates...)
                "now": now,
                "topic": excerpt(letter.topic),
                "payload": excerpt(letter.payload),
                "reason": excerpt(letter.reason),
            },
        )
        self._prune_dead_letters(now)

    def _prune_dead_letters(self, now: float) -> None:
        bound = self.max_dead_letters
        (count,) = self._read("SELECT count(*) FROM dead_letters")[0]
        if int(count) <= bound:
            return
        pruned = self._write(
            "DELETE FROM dead_letters WHERE id IN"
            " (SELECT id FROM dead_letters ORDER BY id LIMIT :excess)",
            {"excess": int(count) - bound},
        )
        self._write(
            "INSERT INTO meta VALUES (:name, :pruned, :now) ON CONFLICT(name) DO UPDATE"
            " SET value = CAST(value AS INTEGER) + :pruned, updated_at = :now",
            {"name": DEAD_LETTERS_PRUNED, "pruned": pruned, "now": now},
        )

    def dead_letters_pruned(self) -> int:
        """How many of the oldest dead letters were pruned to keep the bound, in all."""
        rows = self._read("SELECT value FROM meta WHERE name = ?", (DEAD_LETTERS_PRUNED,))
        return int(rows[0][0]) if rows else 0

    def dead_letters(self, limit: int = 100) -> list[DeadLetterRow]:
        """The newest messages that could not be parsed."""
        rows = self._read(
            "SELECT received_at, topic, payload, reason, id FROM dead_letters"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [DeadLetterRow(float(r), str(t), str(p), str(w), int(i)) for r, t, p, w, i in rows]

    def drop_dead_letters(self, ids: Iterable[int] | None = None) -> int:
        """Delete these dead letters (None: all); how many went."""
        if ids is None:
            return self._write("DELETE FROM dead_letters", {})
        return self._write("DELETE FROM dead_letters WHERE id = :id", [{"id": i} for i in ids])

    def revive_dead(self, *, now: float) -> int:
        """Make this queue's dead changes pending again, due now, attempts reset; how many."""
        return self._write(
            "UPDATE {q} SET state = 'pending', attempts = 0, reason = NULL, not_before = :now,"
            " due_since = :now, updated_at = :now WHERE state = 'dead'",
            {"now": now},
        )

    def drop_dead(self) -> int:
        """Delete this queue's dead changes; how many went."""
        return self._write("DELETE FROM {q} WHERE state = 'dead'", {})
