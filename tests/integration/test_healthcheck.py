"""The health checker against two real regions: fails over after threshold x interval."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

import pytest

from simulators import DEFAULT_REGIONS
from simulators._healthcheck import HealthCheckConfig, HealthChecker
from tests.integration.agent_env import PRIMARY, SECONDARY, Regions, regions

if TYPE_CHECKING:
    from simulators.dns import Zone

__all__ = ["regions"]

pytestmark = pytest.mark.integration


def _checker(regions: Regions, config: HealthCheckConfig) -> HealthChecker:
    identity = regions.fleet.pki.issue_device("iotdr-health-checker")
    context = ssl.create_default_context(cafile=str(regions.fleet.pki.ca_path))
    context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    return HealthChecker(
        regions.dns.zone,
        DEFAULT_REGIONS,
        ports={name: proxy.port for name, proxy in regions.proxies.items()},
        ssl_context=context,
        config=config,
    )


def _target(zone: Zone) -> str:
    record = zone.get("iot", "CNAME")
    assert record is not None
    return record.values[0]


async def _until(zone: Zone, region: str, limit_s: float) -> float:
    wanted = next(r for r in DEFAULT_REGIONS if r.name == region).endpoint + "."
    deadline = time.monotonic() + limit_s
    while _target(zone) != wanted:
        assert time.monotonic() < deadline, f"the CNAME never moved to {region}"
        await asyncio.sleep(0.02)
    return time.monotonic()


@pytest.mark.parametrize("fault", ["down", "blackhole"])
async def test_fails_over_after_threshold_and_back_after_recovery(
    regions: Regions, fault: str
) -> None:
    config = HealthCheckConfig(
        interval_s=0.4, failure_threshold=3, recovery_threshold=2, timeout_s=0.3
    )
    checker = _checker(regions, config)
    checker.start()
    try:
        await asyncio.sleep(1.0)
        assert checker.status()["regions"][PRIMARY]["healthy"]
        assert checker.status()["regions"][PRIMARY]["last_ok"] is True
        faulted = time.monotonic()
        regions.proxies[PRIMARY].set_mode(fault)
        moved = await _until(regions.dns.zone, SECONDARY, 10)
        regions.proxies[PRIMARY].set_mode("up")
        restored = time.monotonic()
        back = await _until(regions.dns.zone, PRIMARY, 10)
    finally:
        await checker.stop()
    # Three failed probes: the first may come right after the fault, the third two intervals on.
    assert moved - faulted >= 2 * config.interval_s
    assert moved - faulted <= 4 * config.interval_s + config.timeout_s + 1.0
    assert back - restored >= config.interval_s * 0.9
    assert back - restored <= 3 * config.interval_s + config.timeout_s + 1.0
    txt = regions.dns.zone.get("_iot", "TXT")
    assert txt is not None
    assert '"primary":"us-east-1"' in txt.values[0]
