"""A drill: after a failover, the secondary's door refuses a device whose policy names the primary.

Two devices run the real agent against :class:`~simulators._regions.LocalRegions`
(its doors, DNS and health checker). Both are registered in both regions; in
the secondary each has the policy a replicator would have left there: one
rewritten for the secondary by the replicator's own
:func:`~replicator.rewrite_policy_document`, the other copied verbatim, its
ARNs still naming the primary (the bug the issue is about). When the primary
goes down, the first device fails over; the second is refused by the
secondary's door for its policy, and ``iotdr sim regions status`` counts it
under ``policy_connect_denied``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import pytest

from device_agent import (
    AgentConfig,
    AgentEvent,
    DiscoveryConfig,
    Endpoint,
    FailoverClient,
    FailoverConfig,
    IdentityConfig,
    MQTTConfig,
    OutboxConfig,
    ProbeConfig,
)
from device_agent.cli import main
from replicator import ArnScope, rewrite_policy_document
from simulators import DEFAULT_REGIONS
from simulators._regions import LocalRegions, iot_client, register_device
from simulators.controlplane import device_policy
from tests.integration import test_regions_faults

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from simulators import CertifiedKey

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = DEFAULT_REGIONS
ACCOUNT = "123456789012"
WAIT_S = 30.0

# The regions with a health checker that probes every 1.2 s (the fault tests' fixture).
regions = test_regions_faults.regions


def replicate(regions: LocalRegions, device: CertifiedKey, policy: str, document: str) -> None:
    """Register ``device`` in the secondary with ``document`` as its (only) policy."""
    iot = iot_client(regions.endpoints()["control_plane_url"], SECONDARY.name)
    registered = iot.register_certificate_without_ca(
        certificatePem=device.cert_path.read_text(), status="ACTIVE"
    )
    iot.create_thing(thingName=device.name)
    iot.attach_thing_principal(thingName=device.name, principal=registered["certificateArn"])
    iot.create_policy(policyName=policy, policyDocument=document)
    iot.attach_policy(policyName=policy, target=registered["certificateArn"])


def agent_config(regions: LocalRegions, device: CertifiedKey, state: Path) -> AgentConfig:
    assert regions.dns is not None
    assert regions.pki is not None
    endpoints = {
        r.name: Endpoint(r.name, r.endpoint, regions.door(r.name).port) for r in DEFAULT_REGIONS
    }
    return AgentConfig(
        identity=IdentityConfig(
            client_id=device.name,
            cert_path=device.cert_path,
            key_path=device.key_path,
            ca_path=regions.pki.ca_path,
        ),
        discovery=DiscoveryConfig(
            name="iot.iotdr.test",
            nameservers=(regions.dns.host,),
            port=regions.dns.port,
            timeout_s=1.0,
            endpoints=endpoints,
        ),
        failover=FailoverConfig(
            probe_interval_s=1.0,
            failback_probe_interval_s=0.5,
            failback_spread_s=0.0,
            stability_window_s=2.0,
        ),
        probe=ProbeConfig(timeout_s=0.8),
        mqtt=MQTTConfig(connect_timeout_s=2.0),
        outbox=OutboxConfig(path=state / f"{device.name}.outbox", synchronous="normal"),
    )


class Events:
    """A client's lifecycle events."""

    def __init__(self) -> None:
        self.seen: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.seen.append(event)

    def connected_in(self, region: str) -> bool:
        return any(e.name == "connected" and e.fields.get("region") == region for e in self.seen)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT_S} s")
        await asyncio.sleep(0.05)


async def test_a_policy_still_naming_the_primary_is_refused_in_the_secondary_after_failover(
    regions: LocalRegions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert regions.pki is not None
    url = regions.endpoints()["control_plane_url"]
    rewritten, stale = regions.pki.issue_device("drill-ok"), regions.pki.issue_device("drill-stale")
    for device in (rewritten, stale):
        register_device(url, PRIMARY.name, device)  # the primary's own device policy
    primary_policy = device_policy(PRIMARY.name, ACCOUNT).document
    good = rewrite_policy_document(
        "fleet",
        primary_policy,
        ArnScope(PRIMARY.name, ACCOUNT),
        ArnScope(SECONDARY.name, ACCOUNT),
    )
    assert SECONDARY.name in good
    assert PRIMARY.name not in good
    replicate(regions, rewritten, "fleet-rewritten", good)
    replicate(regions, stale, "fleet-stale", primary_policy)  # the region left in its ARNs
    secondary = regions.gateway(SECONDARY.name)
    await until(
        lambda: all(
            secondary.gateway.view.policy(p) is not None
            and (found := secondary.gateway.view.certificate(d.certificate_id)) is not None
            and p in found.policies
            for d, p in ((rewritten, "fleet-rewritten"), (stale, "fleet-stale"))
        ),
        "the secondary's door seeing both devices and their policies",
    )

    ok_events, stale_events = Events(), Events()
    async with (
        FailoverClient(agent_config(regions, rewritten, tmp_path), on_event=ok_events),
        FailoverClient(agent_config(regions, stale, tmp_path), on_event=stale_events),
    ):
        await until(
            lambda: (
                ok_events.connected_in(PRIMARY.name) and stale_events.connected_in(PRIMARY.name)
            ),
            "both devices connected in the primary",
        )
        regions.set_fault(PRIMARY.name, "down")
        await until(lambda: ok_events.connected_in(SECONDARY.name), "the failover of drill-ok")
        await until(
            lambda: secondary.status()["policy"]["policy_connect_denied"] >= 1,
            "the secondary refusing drill-stale for its policy",
        )
        assert not stale_events.connected_in(SECONDARY.name)

    status = secondary.status()
    assert status["refused"].get("client_id_not_allowed", 0) == 0
    assert status["policy"]["policy_connect_denied"] >= 1
    assert regions.gateway(PRIMARY.name).status()["policy"]["policy_connect_denied"] == 0

    regions.write_regions_file()
    capsys.readouterr()
    assert main(["sim", "regions", "status", "--state-dir", str(regions.state_dir)]) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    (line,) = [found for found in lines if found.strip().startswith(SECONDARY.name)]
    assert "policy_connect_denied=" in line
    assert main(["sim", "regions", "status", "--state-dir", str(regions.state_dir), "--json"]) in (
        0,
        1,
    )
    reported = json.loads(capsys.readouterr().out)
    assert reported["regions"][SECONDARY.name]["gateway"]["policy"]["policy_connect_denied"] >= 1
