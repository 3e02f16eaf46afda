"""Anti-entropy: when the background pass is due, what it repairs, and its quota share."""

from __future__ import annotations

import threading

import pytest

from device_agent.testing import FakeClock
from replicator._errors import ConfigError, JournalError
from replicator.core._ops import CreateThing, RegisterCertificateWithoutCA
from replicator.runtime._anti_entropy import ALIVE_AT, AntiEntropy, AntiEntropyConfig
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._health import ServiceHealth
from replicator.runtime._journal import Journal
from replicator.runtime._metrics import ReplicatorMetrics
from replicator.runtime._quotas import QuotaConfig, QuotaLimiter
from simulators import InMemoryRegion

EAST, WEST = "us-east-1", "us-west-2"
CONFIG = AntiEntropyConfig(interval_s=600.0, down_after_s=3600.0, first_pass_delay_s=30.0)


def setup(clock: FakeClock) -> tuple[InMemoryRegion, InMemoryRegion, AntiEntropy]:
    primary = InMemoryRegion(EAST, clock=clock.time)
    secondary = InMemoryRegion(WEST, clock=clock.time)
    engine = Engine(
        source=primary,
        target=secondary,
        journal=Journal(":memory:"),
        config=EngineConfig(workers=1, thing_recheck_s=None),
        wall=clock.time,
    )
    return primary, secondary, AntiEntropy(engine, CONFIG, wall=clock.time)


def test_a_new_journal_or_a_long_absence_brings_the_first_pass_soon() -> None:
    clock = FakeClock(epoch=1_700_000_000.0)
    _, _, anti = setup(clock)
    assert anti.first_due(clock.time()) == clock.time() + 30.0  # never ran: events may be lost
    anti.heartbeat(clock.time())
    anti.engine.journal.set_meta("anti_entropy_completed_at", repr(clock.time()), now=clock.time())
    clock.advance(120.0)  # a restart after two minutes: the session kept the messages
    assert anti.first_due(clock.time()) == clock.time() - 120.0 + 600.0
    clock.advance(7200.0)  # away two hours: longer than the broker keeps a session
    assert anti.first_due(clock.time()) == clock.time() + 30.0


def test_a_pass_repairs_what_no_event_showed_and_is_recorded() -> None:
    clock = FakeClock(epoch=1_700_000_000.0)
    primary, secondary, anti = setup(clock)
    cert = "a" * 64
    primary.execute(RegisterCertificateWithoutCA(cert, "PEM", "ACTIVE"))  # no event for these
    primary.execute(CreateThing("pump-1"))
    report = anti.run_pass()
    assert cert in secondary.certificates
    assert "pump-1" in secondary.things
    assert not report.interrupted
    assert anti.completed_at() == clock.time()
    assert anti.details()["passes"] == 1
    metrics = ReplicatorMetrics()
    metrics.registry.register(anti)
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.exposition().decode().splitlines()
        if line and not line.startswith("#")
    }
    assert values["iotdr_replicator_anti_entropy_passes_total"] == 1
    assert values["iotdr_replicator_anti_entropy_last_completed_timestamp_seconds"] == clock.time()
    assert values["iotdr_replicator_anti_entropy_last_differing"] == 2


def test_the_loop_runs_the_due_pass_and_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(epoch=1_700_000_000.0)
    primary, secondary, anti = setup(clock)
    primary.execute(CreateThing("pump-2"))
    stop = threading.Event()
    waits: list[float] = []

    def wait(timeout: float) -> bool:  # the loop's only wait: virtual time
        waits.append(timeout)
        clock.advance(timeout)
        if anti.passes:
            stop.set()
        return stop.is_set()

    monkeypatch.setattr(stop, "wait", wait)
    anti.run(stop)
    assert "pump-2" in secondary.things
    assert waits[0] == 30.0  # the first pass: soon, the journal never saw the service
    assert float(anti.engine.journal.meta(ALIVE_AT) or 0) == clock.time()


def test_a_background_share_holds_its_calls_to_that_fraction_of_the_rate() -> None:
    clock = FakeClock()
    limiter = QuotaLimiter(QuotaConfig.with_overrides({"default": 10.0}), clock=clock)
    start = clock.monotonic()
    for _ in range(21):
        limiter.acquire(EAST, "DescribeCertificate")
    live_s = clock.monotonic() - start  # 10 TPS: the burst, then 0.1 s a call
    background = QuotaLimiter(QuotaConfig.with_overrides({"default": 10.0}), clock=clock)
    background.share_this_thread(0.2)
    start = clock.monotonic()
    for _ in range(21):
        background.acquire(EAST, "DescribeCertificate")
    assert clock.monotonic() - start >= 4 * live_s  # a fifth of the rate
    seen: list[float] = []
    other = threading.Thread(target=lambda: seen.append(background.acquire(WEST, "X")))
    other.start()
    other.join()
    assert seen == [0.0]  # another thread (live work) is not held to the share
    with pytest.raises(ConfigError):
        background.share_this_thread(1.5)


def test_readiness_carries_the_passes_details_and_survives_a_failing_one() -> None:
    clock = FakeClock(epoch=1_700_000_000.0)
    _, _, anti = setup(clock)
    health = ServiceHealth()
    health.engine_running()
    health.add_details("anti_entropy", anti.details)
    verdict = health.readiness().as_dict()
    assert verdict["ok"] is True
    assert verdict["details"]["anti_entropy"] == {
        "passes": 0,
        "running": False,
        "last_completed_at": None,
    }

    def broken() -> dict[str, object]:
        raise JournalError(":memory:", "closed")

    health.add_details("anti_entropy", broken)
    assert health.readiness().as_dict()["details"] == {
        "anti_entropy": {"error": "journal :memory:: closed"}
    }
