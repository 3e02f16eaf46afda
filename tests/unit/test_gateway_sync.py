"""The registry sync loop against a fake source: snapshot, changes, resync, outages."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from device_agent.testing import FakeClock
from simulators._errors import GatewayError
from simulators.gateway import (
    Applied,
    CertificateRecord,
    RegistryChanges,
    RegistrySnapshot,
    RegistrySyncConfig,
    RegistryView,
)
from simulators.gateway._sync import RegistrySync

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def active(cid: str, status: str = "ACTIVE") -> CertificateRecord:
    return CertificateRecord(cid, status)


class FakeSource:
    """Answers from queues the test fills; a poll with nothing queued waits like a long poll."""

    def __init__(self) -> None:
        self.snapshots: asyncio.Queue[RegistrySnapshot | GatewayError] = asyncio.Queue()
        self.changes_queue: asyncio.Queue[RegistryChanges | GatewayError] = asyncio.Queue()
        self.polls: list[tuple[int, str]] = []

    async def snapshot(self) -> RegistrySnapshot:
        found = await self.snapshots.get()
        if isinstance(found, GatewayError):
            raise found
        return found

    async def changes(self, since: int, epoch: str, wait_s: float) -> RegistryChanges:
        self.polls.append((since, epoch))
        found = await self.changes_queue.get()
        if isinstance(found, GatewayError):
            raise found
        return found

    async def register_jitr(
        self, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[CertificateRecord, bool]:
        raise NotImplementedError


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def running(
    source: FakeSource, clock: FakeClock
) -> AsyncIterator[tuple[RegistrySync, RegistryView, list[Applied]]]:
    view = RegistryView("us-east-1")
    applied: list[Applied] = []
    config = RegistrySyncConfig(resync_interval_s=30.0, start_timeout_s=1.0)
    sync = RegistrySync(source, view, applied.append, config=config, clock=clock.monotonic)
    source.snapshots.put_nowait(RegistrySnapshot("e1", 3, (active("c1"), active("c2"))))
    await sync.load()
    task = asyncio.create_task(sync.run())
    yield sync, view, applied
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def reachable(sync: RegistrySync) -> bool:
    return sync.reachable


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_changes_after_the_snapshot_are_applied(
    source: FakeSource, running: tuple[RegistrySync, RegistryView, list[Applied]]
) -> None:
    sync, view, applied = running
    await settle()
    assert source.polls == [(3, "e1")]
    source.changes_queue.put_nowait(RegistryChanges("e1", 4, (active("c1", "REVOKED"),)))
    await settle()
    assert view.certificate("c1") == active("c1", "REVOKED")
    assert applied[-1].deactivated == {"c1"}
    assert source.polls[-1] == (4, "e1")
    assert sync.reachable


async def test_a_resync_answer_or_a_new_epoch_loads_a_snapshot(
    source: FakeSource, running: tuple[RegistrySync, RegistryView, list[Applied]]
) -> None:
    _, view, applied = running
    source.changes_queue.put_nowait(RegistryChanges("e1", 9, resync=True))
    source.snapshots.put_nowait(RegistrySnapshot("e1", 9, (active("c2"),)))
    await settle()
    assert view.revision == 9
    assert applied[-1].deactivated == {"c1"}
    source.changes_queue.put_nowait(RegistryChanges("e2", 1))  # the control plane restarted
    source.snapshots.put_nowait(RegistrySnapshot("e2", 0, (active("c2"), active("c3"))))
    await settle()
    assert (view.epoch, view.revision) == ("e2", 0)
    assert view.certificate("c3") is not None


async def test_a_whole_snapshot_every_resync_interval(
    source: FakeSource, clock: FakeClock, running: tuple[RegistrySync, RegistryView, list[Applied]]
) -> None:
    sync, view, _ = running
    clock.advance(31.0)
    source.changes_queue.put_nowait(RegistryChanges("e1", 3))  # the current poll returns empty
    source.snapshots.put_nowait(RegistrySnapshot("e1", 5, (active("c9"),)))
    await settle()
    assert sync.snapshots == 2
    assert view.certificate("c9") is not None


async def test_an_unreachable_control_plane_keeps_the_view_and_is_logged_once(
    source: FakeSource,
    running: tuple[RegistrySync, RegistryView, list[Applied]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync, view, _ = running
    caplog.set_level(logging.INFO, logger="simulators.gateway._sync")
    for _ in range(3):
        source.changes_queue.put_nowait(GatewayError("connection refused"))
    await asyncio.sleep(0.25 + 0.5 + 0.1)  # two backoffs
    assert not reachable(sync)
    assert view.certificate("c1") == active("c1")  # the door keeps admitting by what it knew
    source.changes_queue.put_nowait(RegistryChanges("e1", 4, (active("c4"),)))
    await asyncio.sleep(1.1)
    assert reachable(sync)
    assert view.certificate("c4") is not None
    events = [r.getMessage() for r in caplog.records]
    assert events.count("gateway.registry.unreachable") == 1
    assert events.count("gateway.registry.reachable") == 1


async def test_the_first_snapshot_retries_then_fails_with_one_clear_error(
    source: FakeSource, clock: FakeClock
) -> None:
    view = RegistryView("us-west-2")
    config = RegistrySyncConfig(start_timeout_s=0.6)
    sync = RegistrySync(source, view, lambda applied: None, config=config, clock=clock.monotonic)
    source.snapshots.put_nowait(GatewayError("control plane starting"))
    source.snapshots.put_nowait(RegistrySnapshot("e1", 0))
    await sync.load()
    assert view.loaded
    for _ in range(10):
        source.snapshots.put_nowait(GatewayError("connection refused"))
    with pytest.raises(GatewayError, match=r"no registry snapshot .* connection refused"):
        await RegistrySync(
            source, RegistryView("x"), lambda applied: None, config=config, clock=clock.monotonic
        ).load()


def test_sync_config_is_checked() -> None:
    with pytest.raises(GatewayError, match="long_poll_s"):
        RegistrySyncConfig(long_poll_s=0)
