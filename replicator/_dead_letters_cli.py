"""``iotdr replicator dead-letters list|replay|purge``: what the journal gave up on.

Registered on the ``replicator`` group by ``replicator/cli.py``. Works on the
journal file alone (no AWS call): *dead letters* are messages the feed could
not parse, *dead changes* the rows of a queue that kept failing
(``runtime/_dead_letters.py``). ``replay`` parses each dead letter again (a
fixed parser, or a message that was only a symptom) and journals what now
parses, and makes the queue's dead changes pending again; the service applies
them at its next look. ``purge`` deletes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from replicator.runtime._journal import Journal

__all__ = ["dead_letters"]

_journal_option = click.option(
    "--journal",
    "journal_path",
    required=True,
    envvar="IOTDR_REPLICATOR_JOURNAL",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The service's SQLite journal.",
)
_queue_option = click.option(
    "--queue",
    type=click.Choice(["changes", "failback", "jitr"]),
    default="changes",
    show_default=True,
    help="Whose dead changes: the forward engine's, automatic failback's, the JITR handler's.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="JSON lines.")


def _open(options: dict[str, Any]) -> Journal:
    from replicator.runtime._journal import Journal  # noqa: PLC0415

    return Journal(options["journal_path"], queue=options["queue"])


def _echo(line: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(line, sort_keys=True, default=str) if as_json else text)


@click.group("dead-letters")
def dead_letters() -> None:
    """List, replay or purge the journal's dead letters and dead changes."""


@dead_letters.command("list")
@_journal_option
@_queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@_json_option
def dead_letters_list(**options: Any) -> None:
    """The newest dead letters, then the queue's dead changes, with their reasons."""
    with _open(options) as journal:
        for letter in journal.dead_letters(options["limit"]):
            line = {"kind": "letter", "id": letter.id, "received_at": letter.received_at}
            line |= {"topic": letter.topic, "reason": letter.reason, "payload": letter.payload}
            _echo(line, options["as_json"], f"letter {letter.id} {letter.topic}: {letter.reason}")
        for key, attempts, reason in journal.rows("dead"):
            line = {"kind": "change", "key": str(key), "attempts": attempts, "reason": reason}
            _echo(line, options["as_json"], f"change {key} ({attempts} attempts): {reason}")
        pruned = journal.dead_letters_pruned()
        if pruned and not options["as_json"]:
            click.echo(f"({pruned} older dead letters were pruned to keep the bound)")


@dead_letters.command("replay")
@_journal_option
@_queue_option
@click.option(
    "--region",
    required=True,
    envvar="IOTDR_PRIMARY_REGION",
    help="The region the dead letters came from (the feed's: the primary's for 'changes').",
)
@_json_option
def dead_letters_replay(**options: Any) -> None:
    """Parse the dead letters again (journaling what parses now); revive the dead changes."""
    from replicator.core import _records  # noqa: PLC0415

    now = time.time()
    accepted = ignored = still_dead = 0
    with _open(options) as journal:
        done: list[int] = []
        for letter in journal.dead_letters(limit=journal.max_dead_letters):
            if letter.topic == "(sqs)":
                result = _records.parse_sqs_body(letter.payload, region=options["region"])
            else:
                result = _records.parse_message(
                    letter.topic, letter.payload, region=options["region"]
                )
            if isinstance(result, _records.DeadLetter):
                still_dead += 1
                continue
            if isinstance(result, _records.Ignored):
                ignored += 1
            else:
                journal.accept(result, now=now)
                accepted += 1
            done.append(letter.id)
        journal.drop_dead_letters(done)
        revived = journal.revive_dead(now=now)
    summary = {
        "letters_accepted": accepted,
        "letters_ignored": ignored,
        "letters_still_dead": still_dead,
        "changes_revived": revived,
    }
    text = (
        f"{accepted} dead letters journaled, {ignored} needed nothing, {still_dead} still do not "
        f"parse; {revived} dead changes pending again"
    )
    _echo(summary, options["as_json"], text)


@dead_letters.command("purge")
@_journal_option
@_queue_option
@click.option("--letters/--no-letters", default=True, help="Delete the dead letters.")
@click.option("--changes/--no-changes", default=True, help="Delete the queue's dead changes.")
@_json_option
def dead_letters_purge(**options: Any) -> None:
    """Delete the dead letters and the queue's dead changes."""
    with _open(options) as journal:
        letters = journal.drop_dead_letters() if options["letters"] else 0
        changes = journal.drop_dead() if options["changes"] else 0
    summary = {"letters_deleted": letters, "changes_deleted": changes}
    _echo(summary, options["as_json"], f"{letters} dead letters, {changes} dead changes deleted")
