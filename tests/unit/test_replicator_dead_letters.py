"""The journal's dead letters are bounded, and ``iotdr replicator dead-letters`` lists,
replays and purges them and the queue's dead changes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from device_agent.cli import main
from replicator.core._records import DeadLetter, ObjectNamed
from replicator.core._state import ObjectKey
from replicator.runtime._journal import Journal
from replicator.runtime._metrics import ReplicatorMetrics

if TYPE_CHECKING:
    from pathlib import Path

EAST = "us-east-1"


def test_the_oldest_dead_letters_are_pruned_past_the_bound_and_counted() -> None:
    with Journal(":memory:", max_dead_letters=3) as journal:
        for n in range(5):
            journal.dead_letter(DeadLetter("t", f"payload {n}", "bad"), now=float(n))
        assert [d.payload for d in journal.dead_letters()] == [
            "payload 4",
            "payload 3",
            "payload 2",
        ]
        counts = journal.counts(10.0)
        assert (counts.dead_letters, counts.dead_letters_pruned) == (3, 2)
        metrics = ReplicatorMetrics()
        metrics.watch(journal=journal, now=lambda: 10.0)
        text = metrics.exposition().decode()
        assert "iotdr_replicator_dead_letters_pruned_total 2.0" in text


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_dead_letters"):
        Journal(":memory:", max_dead_letters=0)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["replicator", "dead-letters", *args])
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        # a message the parser of the day refused, and one that never will parse
        journal.dead_letter(
            DeadLetter("$aws/events/thing/pump-1/created", '{"operation": "CREATED"}', "old bug"),
            now=1.0,
        )
        journal.dead_letter(DeadLetter("iotdr/replicate", "{not json", "not JSON"), now=2.0)
        key = ObjectKey.thing("pump-2")
        journal.accept(ObjectNamed(region=EAST, key=key), now=3.0)
        (claim,) = journal.claim(now=3.0, limit=1)
        journal.dead(claim, now=4.0, reason="RefusedError: kept failing")
    return path


def test_list_shows_letters_and_dead_changes(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(["list", "--journal", str(journal_path), "--json"], capsys)
    assert code == 0
    found = [json.loads(line) for line in lines]
    assert [(f["kind"], f.get("topic") or f.get("key")) for f in found] == [
        ("letter", "iotdr/replicate"),
        ("letter", "$aws/events/thing/pump-1/created"),
        ("change", "thing/pump-2"),
    ]
    assert found[2]["reason"] == "RefusedError: kept failing"


def test_replay_journals_what_parses_now_and_revives_dead_changes(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replay", "--journal", str(journal_path), "--region", EAST, "--json"]
    code, lines = run(args, capsys)
    assert code == 0
    assert json.loads(lines[0]) == {
        "letters_accepted": 1,
        "letters_ignored": 0,
        "letters_still_dead": 1,
        "changes_revived": 1,
    }
    with Journal(journal_path) as journal:
        assert [d.topic for d in journal.dead_letters()] == ["iotdr/replicate"]
        pending = {str(claim.key) for claim in journal.claim(now=1e10, limit=10)}
        assert pending == {"thing/pump-1", "thing/pump-2"}
        assert journal.counts(1e10).dead == 0


def test_purge_deletes_letters_and_dead_changes(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(["purge", "--journal", str(journal_path), "--json"], capsys)
    assert code == 0
    assert json.loads(lines[0]) == {"letters_deleted": 2, "changes_deleted": 1}
    with Journal(journal_path) as journal:
        counts = journal.counts(10.0)
        assert (counts.dead_letters, counts.dead) == (0, 0)


def test_a_missing_journal_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["replicator", "dead-letters", "list", "--journal", str(tmp_path / "none.db")])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
