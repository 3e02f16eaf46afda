"""A message the device's IoT policy forbids, published amid normal ones through the real door.

The local regions' doors authorize every PUBLISH by the certificate's
policies, as AWS IoT does (:mod:`simulators.gateway._guard`): on MQTT 3.1.1 a
denied PUBLISH closes the connection; on MQTT 5 a QoS 1 one is answered
PUBACK 0x87 (not authorized) and the connection stays. Either way the agent
must not take the refusal for a regional outage: it stays in its region
(no failover, no connection in the other region), sets the refused message
aside in the outbox's ``dead_letter`` table after ``dead_letter_after``
attempts (``message.dead_lettered``, ``dead_lettered`` in the status), and
delivers every other message. They are counted at the broker behind the door.
MQTT 3.1.1 on paho; MQTT 5 on paho and on the CRT.

The device is registered in both regions with the same policy (each naming
its own region), so that a device that wrongly failed over would be admitted
in the secondary and be seen there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from typing import TYPE_CHECKING

import pytest

from device_agent import FailoverClient, Outbox
from simulators import DEFAULT_REGIONS
from simulators.controlplane import BulkPolicy, device_policy
from tests.integration import test_regions_faults
from tests.integration.agent_env import Watcher
from tests.integration.test_regions_policies import ACCOUNT, Events, agent_config, until

if TYPE_CHECKING:
    from pathlib import Path

    from device_agent import AgentEvent
    from simulators._regions import LocalRegions

__all__ = ["regions"]

pytestmark = pytest.mark.integration

PRIMARY, SECONDARY = DEFAULT_REGIONS
# The regions with a health checker that probes every 1.2 s (the fault tests' fixture).
regions = test_regions_faults.regions

NORMAL = 30  # messages the policy allows, sent around the forbidden one
FORBIDDEN_AT = 10  # the forbidden message is published after this many normal ones
DEAD_LETTER_AFTER = 3
needs_awscrt = pytest.mark.skipif(
    importlib.util.find_spec("awscrt") is None,
    reason="the crt extra (awscrt) is not installed",
)
# Events that would mean the device took the refusal for its region failing.
SWITCHES = ("failover.", "failback.", "dr.move.")


def policy_denying(region: str, name: str) -> BulkPolicy:
    """The local regions' device policy, but ``iot:Publish`` on ``dt/NAME/forbidden`` is denied."""
    document = json.loads(device_policy(region, ACCOUNT).document)
    document["Statement"].append(
        {
            "Effect": "Deny",
            "Action": "iot:Publish",
            "Resource": f"arn:aws:iot:{region}:{ACCOUNT}:topic/dt/{name}/forbidden",
        }
    )
    return BulkPolicy(name=f"deny-forbidden-{name}", document=json.dumps(document))


@pytest.mark.parametrize(
    ("transport", "protocol", "expected_loss"),
    [
        ("paho", "3.1.1", "publish_refused"),  # the door closes the connection on the PUBLISH
        ("paho", "5", None),  # the door answers PUBACK 0x87; the connection stays
        pytest.param("crt", "5", None, marks=needs_awscrt),
    ],
)
async def test_a_publish_the_policy_denies_is_dead_lettered_without_failover(
    regions: LocalRegions,
    tmp_path: Path,
    transport: str,
    protocol: str,
    expected_loss: str | None,
) -> None:
    assert regions.pki is not None
    if protocol == "5" and not regions.broker(PRIMARY.name).mqtt5:
        pytest.skip("MQTT 5 needs mosquitto, which is not installed (amqtt speaks 3.1.1)")
    name = f"refused-{transport}-{protocol.replace('.', '')}"
    device = regions.pki.issue_device(name)
    for region in DEFAULT_REGIONS:
        regions.register_fleet([device], [region.name], policy=policy_denying(region.name, name))

    config = agent_config(regions, device, tmp_path)
    config = dataclasses.replace(
        config,
        mqtt=dataclasses.replace(config.mqtt, transport=transport, protocol=protocol),  # type: ignore[arg-type]
        outbox=dataclasses.replace(config.outbox, dead_letter_after=DEAD_LETTER_AFTER),
    )
    assert config.outbox.path is not None
    broker = regions.broker(PRIMARY.name)
    watcher = Watcher(PRIMARY.name, broker.host, broker.port)
    events = Events()
    try:
        async with FailoverClient(config, on_event=events) as client:
            await until(lambda: events.connected_in(PRIMARY.name), "connected in the primary")
            forbidden = None
            for n in range(NORMAL):
                if n == FORBIDDEN_AT:
                    forbidden = await client.publish(f"dt/{name}/forbidden", {"n": -1})
                await client.publish(f"dt/{name}/telemetry", {"n": n})
            await until(lambda: client.status().outbox_depth == 0, "the outbox emptied")
            # Every allowed message at the broker behind the door (QoS 1: maybe twice).
            await until(
                lambda: set(watcher.numbers(f"dt/{name}/telemetry")) == set(range(NORMAL)),
                "every allowed message at the primary's broker",
            )
            status = client.status()
    finally:
        watcher.close()

    check_stayed_and_set_aside(
        regions, events.seen, watcher, name=name, forbidden=forbidden, region=status.region
    )
    assert status.dead_lettered == 1
    with Outbox(config.outbox.path) as outbox:
        assert len(outbox) == 0
        ((entry, reason),) = outbox.dead_letters()
    assert (entry.seq, entry.topic) == (forbidden, f"dt/{name}/forbidden")
    assert json.loads(entry.payload) == {"n": -1}
    assert entry.attempts == DEAD_LETTER_AFTER
    assert reason

    losses = [e.fields["kind"] for e in events.seen if e.name == "connection.lost"]
    if expected_loss is None:
        assert not losses  # the refusal is an answer on a live connection
        assert len([e for e in events.seen if e.name == "connected"]) == 1
    else:
        # The first loss had other messages in flight; the ones after it, the message alone.
        assert len(losses) == DEAD_LETTER_AFTER
        assert losses[1:] == [expected_loss] * (DEAD_LETTER_AFTER - 1)


def check_stayed_and_set_aside(
    regions: LocalRegions,
    seen: list[AgentEvent],
    watcher: Watcher,
    *,
    name: str,
    forbidden: int | None,
    region: str | None,
) -> None:
    """No region switch; the forbidden message refused once per attempt, then set aside."""
    assert region == PRIMARY.name
    assert not [e for e in seen if e.name == "connected" and e.fields["region"] != PRIMARY.name]
    assert not [e.name for e in seen if e.name.startswith(SWITCHES)]
    # It never got past the door, and was refused once per attempt: no reconnect loop.
    assert not watcher.numbers(f"dt/{name}/forbidden")
    denied = regions.gateway(PRIMARY.name).status()["policy"]["policy_publish_denied"]
    assert denied == DEAD_LETTER_AFTER
    (dead,) = [e for e in seen if e.name == "message.dead_lettered"]
    assert dead.fields["seq"] == forbidden
    assert dead.fields["topic"] == f"dt/{name}/forbidden"
    assert dead.fields["region"] == PRIMARY.name
    assert dead.fields["attempts"] == DEAD_LETTER_AFTER
