"""A device host's shared outbox file: batched writes, recovery, the OutboxPort contract."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent import OutboxError, OutboxFullError
from simulators.fleet._host_outbox import HostOutboxes

if TYPE_CHECKING:
    from pathlib import Path

    from device_agent import OutboxPort


def test_reads_come_from_memory_and_writes_wait_for_the_flush(tmp_path: Path) -> None:
    host = HostOutboxes(tmp_path / "host.sqlite")
    box: OutboxPort = host.open("dev-1")
    first = box.put("t/1", b"a")
    second = box.put("t/1", b"b")
    assert (first.seq, second.seq) == (1, 2)
    assert [e.payload for e in box.peek()] == [b"a", b"b"]
    assert [e.seq for e in box.peek(after_seq=1)] == [2]
    assert host.written == 0
    host.flush()
    assert (host.written, host.flushes) == (2, 1)
    host.close()


def test_a_message_acked_before_the_flush_is_never_written(tmp_path: Path) -> None:
    host = HostOutboxes(tmp_path / "host.sqlite")
    box = host.open("dev-1")
    entry = box.put("t", b"x")
    assert box.ack(entry.seq)
    assert not box.ack(entry.seq)  # a duplicate PUBACK
    host.flush()
    assert host.written == 0
    assert host.flushes == 0  # nothing was queued
    host.close()


def test_what_was_not_acked_comes_back_in_order_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "host.sqlite"
    host = HostOutboxes(path)
    a, b = host.open("dev-a"), host.open("dev-b")
    for n in range(5):
        a.put("t/a", str(n).encode())
    b.put("t/b", b"only")
    host.flush()
    a.ack(1)
    a.ack(3)
    host.close()
    again = HostOutboxes(path)
    a2, b2 = again.open("dev-a"), again.open("dev-b")
    assert [(e.seq, e.payload) for e in a2.peek()] == [(2, b"1"), (4, b"3"), (5, b"4")]
    assert [e.payload for e in b2.peek()] == [b"only"]
    assert a2.put("t/a", b"next").seq == 6  # seq only grows
    assert again.open("dev-c").depth == 0
    again.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_capacity_and_close(tmp_path: Path) -> None:
    host = HostOutboxes(tmp_path / "host.sqlite", capacity=2)
    box = host.open("dev-1")
    box.put("t", b"1")
    box.mark_sent(1)
    assert box.peek()[0].attempts == 1
    box.put("t", b"2")
    with pytest.raises(OutboxFullError):
        box.put("t", b"3")
    box.close()
    with pytest.raises(OutboxError):
        box.put("t", b"4")
    with pytest.raises(OutboxError):
        box.peek()
    assert box.depth == 2
    host.close()
    host.close()  # idempotent
    with pytest.raises(OutboxError):
        host.open("dev-2")


async def test_the_loop_flushes_on_its_own(tmp_path: Path) -> None:
    import asyncio

    host = HostOutboxes(tmp_path / "host.sqlite", flush_interval_s=0.01)
    host.start()
    host.open("dev-1").put("t", b"x")
    for _ in range(200):
        if host.written:
            break
        await asyncio.sleep(0.01)
    assert host.written == 1
    host.close()


_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "ack", "flush"]), st.integers(0, 2), st.integers(1, 30)),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_model_every_message_is_acked_once_or_still_there_after_a_restart(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("model") / "host.sqlite"
    host = HostOutboxes(path)
    devices = [f"dev-{i}" for i in range(3)]
    boxes = {d: host.open(d) for d in devices}
    model: dict[str, dict[int, bytes]] = {d: {} for d in devices}
    for op, index, n in ops:
        device = devices[index]
        if op == "put":
            entry = boxes[device].put("t", str(n).encode())
            model[device][entry.seq] = entry.payload
        elif op == "ack":
            assert boxes[device].ack(n) == (n in model[device])
            model[device].pop(n, None)
        else:
            host.flush()
    host.close()
    again = HostOutboxes(path)
    for device in devices:
        box = again.open(device)
        assert {e.seq: e.payload for e in box.peek(limit=1000)} == model[device]
    again.close()
