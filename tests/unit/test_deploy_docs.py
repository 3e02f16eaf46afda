"""docs/deploy.md: every ``iotdr`` command in the runbook is a real one.

Each command (in a code block, continuation lines joined, or in an inline code
span) is resolved to its sub-command, whose ``--help`` must exit 0, and every
option it gives must be one that command (or its group) has.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from device_agent.cli import main, root

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def commands_in(markdown: str) -> list[str]:
    """Every ``iotdr ...`` command of ``markdown``, once each, in order."""
    found: list[str] = []
    in_block = False
    for line in re.sub(r"\s*\\\n\s*", " ", markdown).splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        text = line.strip().removeprefix("$ ")
        if in_block:
            if text.startswith("iotdr "):
                found.append(text)
        else:
            found += re.findall(r"`(iotdr(?: [^`]*)?)`", line)
    return list(dict.fromkeys(found))


def resolve(command: str) -> tuple[list[str], list[str]]:
    """The sub-command path of ``command`` and the problems with its options (none: fine)."""
    words = shlex.split(command)[1:]
    current: click.Command = root
    path: list[str] = []
    problems: list[str] = []
    context = click.Context(root, info_name="iotdr")
    index = 0
    while isinstance(current, click.Group) and index < len(words):
        word = words[index]
        index += 1
        if word.startswith("-"):
            if word.split("=", 1)[0] not in _options(current):
                problems.append(f"{' '.join(['iotdr', *path])} has no {word}")
            continue
        found = current.get_command(context, word)
        if found is None:
            problems.append(f"{' '.join(['iotdr', *path])} has no command {word!r}")
            return path, problems
        path.append(word)
        current = found
    known = _options(current)
    for word in words[index:]:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            problems.append(f"{' '.join(['iotdr', *path])} has no {option}")
    return path, problems


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


RUNBOOK_COMMANDS = commands_in(RUNBOOK.read_text())


def test_the_runbook_has_the_commands_the_issue_names() -> None:
    assert len(RUNBOOK_COMMANDS) >= 10
    joined = "\n".join(RUNBOOK_COMMANDS)
    assert "iotdr tools e2e" in joined  # the drill
    assert "iotdr replicator reconcile --direction secondary-to-primary" in joined  # failback
    assert "iotdr replicator iam-policy --identity health-probe" in joined


@pytest.mark.parametrize("command", RUNBOOK_COMMANDS)
def test_every_runbook_command_is_real(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, problems = resolve(command)
    assert not problems, problems
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: iotdr {' '.join(path)}".rstrip())


def test_a_made_up_command_or_option_is_caught() -> None:
    text = "```\niotdr replicator teleport --now\n```\nand `iotdr tools e2e --warp 9`\n"
    first, second = commands_in(text)
    assert resolve(first)[1] == ["iotdr replicator has no command 'teleport'"]
    assert resolve(second)[1] == ["iotdr tools e2e has no --warp"]
    assert resolve("iotdr --log-jsn replicator run")[1] == ["iotdr has no --log-jsn"]


def test_continuation_lines_are_one_command() -> None:
    text = "```\niotdr replicator reconcile --primary-region a \\\n  --secondary-region b\n```\n"
    assert commands_in(text) == [
        "iotdr replicator reconcile --primary-region a --secondary-region b"
    ]
