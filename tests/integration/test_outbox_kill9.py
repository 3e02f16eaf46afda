"""The outbox survives SIGKILL: a child process writes, the test kills it, then reads.

The child prints a line only after ``put()`` (or ``ack()``) has returned, so
every printed line is a promise that the change is committed. After the kill
the outbox must keep every promise: each printed put present with its payload,
in order, none duplicated, each printed ack gone. At most one more message may
be there, the one whose put committed just before the kill and was never printed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from device_agent._outbox import Outbox

if TYPE_CHECKING:
    from device_agent._outbox import Synchronous

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL"),
]

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 100_000  # far more than the child can write before it is killed
KILL_AFTER = 300  # printed puts
DEADLINE_S = 60.0

_CHILD = """
import sys

sys.path.insert(0, sys.argv[1])
from device_agent._outbox import Outbox

path, count, ack_every, synchronous = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


def payload(number):  # the same as the test's payload(); the test checks every one
    return number.to_bytes(4, "big") + bytes(range(number % 256))


with Outbox(path, capacity=count, synchronous=synchronous) as outbox:
    for number in range(count):
        entry = outbox.put(f"kill9/{number % 4}", payload(number))
        print("put", number, entry.seq, flush=True)
        if ack_every and number % ack_every == 0:
            outbox.ack(entry.seq)
            print("ack", entry.seq, flush=True)
"""


def payload(number: int) -> bytes:
    """Binary, different for each message, sometimes with no bytes after the number."""
    return number.to_bytes(4, "big") + bytes(range(number % 256))


@dataclass
class Promises:
    """What the child printed before it died."""

    puts: dict[int, int] = field(default_factory=dict)  # seq -> message number
    acks: set[int] = field(default_factory=set)
    returncode: int | None = None


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        # A line cut short by the kill is no promise.
        if line.endswith("\n"):
            lines.put(line)
    lines.put(None)


def _record(line: str, promises: Promises) -> None:
    kind, *numbers = line.split()
    if kind == "put":
        number, seq = map(int, numbers)
        promises.puts[seq] = number
    else:
        promises.acks.add(int(numbers[0]))


def _write_then_kill(path: Path, *, ack_every: int, synchronous: Synchronous) -> Promises:
    args = [str(ROOT), str(path), str(MESSAGES), str(ack_every), synchronous]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    reader.start()
    promises = Promises()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(promises.puts) < KILL_AFTER:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail(f"the child printed {len(promises.puts)} puts in {DEADLINE_S} s")
            if line is None:
                child.wait(timeout=10)
                pytest.fail(f"the child exited early ({child.returncode}): {child.stderr.read()}")
            _record(line, promises)
        # Mid-write: the child goes on putting while the signal is on its way.
        os.kill(child.pid, signal.SIGKILL)
        promises.returncode = child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        reader.join(timeout=10)
        child.stdout.close()
        child.stderr.close()
    # What it printed between the 300th put and its death is promised too.
    while (line := lines.get_nowait()) is not None:
        _record(line, promises)
    return promises


def _check_promises_kept(path: Path, promises: Promises, *, ack_every: int) -> None:
    assert promises.returncode == -signal.SIGKILL
    with Outbox(path, capacity=MESSAGES) as outbox:
        stored = outbox.peek(limit=MESSAGES)
        seqs = [entry.seq for entry in stored]
        assert seqs == sorted(set(seqs)), "out of order or duplicated"

        last = max(promises.puts)
        unprinted = [seq for seq in seqs if seq not in promises.puts]
        assert len(unprinted) <= 1, unprinted
        assert all(seq > last for seq in unprinted)

        numbers = [promises.puts.get(seq, promises.puts[last] + 1) for seq in seqs]
        assert numbers == sorted(set(numbers))
        for entry, number in zip(stored, numbers, strict=True):
            assert entry.payload == payload(number), entry
            assert entry.topic == f"kill9/{number % 4}"

        assert not promises.acks & set(seqs), "an acked message came back"
        # The newest put may have been acked without the ack being printed.
        unsure = {last} if ack_every and promises.puts[last] % ack_every == 0 else set()
        promised = set(promises.puts) - promises.acks - unsure
        assert promised <= set(seqs), sorted(promised - set(seqs))

        # And it goes on: a new message gets a seq past everything before the kill.
        assert outbox.put("kill9/after", b"after").seq > max([last, *seqs])


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_kill9_loses_no_committed_message(tmp_path: Path, synchronous: Synchronous) -> None:
    path = tmp_path / "outbox.db"
    promises = _write_then_kill(path, ack_every=0, synchronous=synchronous)
    assert len(promises.puts) >= KILL_AFTER
    assert not promises.acks
    _check_promises_kept(path, promises, ack_every=0)


def test_kill9_keeps_acked_messages_gone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    promises = _write_then_kill(path, ack_every=3, synchronous="full")
    assert len(promises.acks) >= KILL_AFTER // 3
    _check_promises_kept(path, promises, ack_every=3)
