"""Failback on the local regions: after an outage, what changed in the secondary goes back.

The story of a regional outage, through boto3 and the ``iotdr replicator``
command: the replicator synced the primary to the secondary; during the outage
a device registered in the secondary, an operator changed a thing there and a
device reported new state there, while in the primary a thing was deleted that
the secondary had not heard of yet. ``reconcile --direction
secondary-to-primary`` with the service's journal (its sync points) copies back
the first three and does not resurrect the fourth; the forward direction then
finishes the deletion and leaves the devices registered in the secondary alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from replicator.core._records import ObjectNamed
from replicator.core._state import ObjectKey
from replicator.runtime._failback import AutoFailback
from replicator.runtime._feed import FeedConfig
from replicator.runtime._host import run_service
from replicator.runtime._journal import Journal
from tests.integration.test_replicator_live import (
    EAST,
    WEST,
    attributes,
    pair,
    shadow_state,
    wait_for,
)

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.pytest_plugin import FleetFixture
    from tests.integration.test_replicator_live import LocalPair

__all__ = ["pair"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration


def cli(*args: str) -> tuple[int, dict[str, Any]]:
    from device_agent.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["replicator", *args, "--json"])
    return code, json.loads(buffer.getvalue())


def policy_document() -> str:
    statement = {
        "Effect": "Allow",
        "Action": "iot:Connect",
        "Resource": f"arn:aws:iot:{EAST}:123456789012:client/${{iot:Connection.Thing.ThingName}}",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def test_failback_after_an_outage_copies_back_only_what_changed_in_the_secondary(  # noqa: PLR0915
    pair: LocalPair, tmp_path: Path, fleet_pki: FleetFixture
) -> None:
    east, west = pair.iot(EAST), pair.iot(WEST)
    east_data, west_data = pair.data(EAST), pair.data(WEST)
    journal_path = tmp_path / "replicator.db"

    east.create_policy(policyName="fleet", policyDocument=policy_document())
    device = fleet_pki.pki.issue_device("pump-1")
    cert = east.register_certificate_without_ca(
        certificatePem=device.cert_path.read_text(), status="ACTIVE"
    )
    east.attach_policy(policyName="fleet", target=cert["certificateArn"])
    east.create_thing(thingName="pump-1", attributePayload={"attributes": {"site": "a"}})
    east.attach_thing_principal(thingName="pump-1", principal=cert["certificateArn"])
    east.create_thing(thingName="pump-2", attributePayload={"attributes": {"site": "a"}})
    east_data.update_thing_shadow(thingName="pump-1", payload=b'{"state":{"reported":{"temp":20}}}')
    with Journal(journal_path) as journal:  # the service's forward run, before the outage
        engine = pair.engine(journal, thing_recheck_s=None)
        for key in (ObjectKey.thing("pump-1"), ObjectKey.thing("pump-2")):
            journal.accept(ObjectNamed(region=EAST, key=key), now=engine.now())
        journal.accept(ObjectNamed(region=EAST, key=ObjectKey.for_shadow("pump-1")), now=0.0)
        engine.drain()
    assert attributes(west, "pump-1") == {"site": "a"}
    assert shadow_state(west_data, "pump-1")["reported"] == {"temp": 20}

    # The outage: devices and operators work in the secondary.
    newcomer = fleet_pki.pki.issue_device("pump-9")
    registered = west.register_certificate_without_ca(
        certificatePem=newcomer.cert_path.read_text(), status="ACTIVE"
    )
    west.attach_policy(policyName="fleet", target=registered["certificateArn"])
    west.create_thing(thingName="pump-9", attributePayload={"attributes": {"site": "b"}})
    west.attach_thing_principal(thingName="pump-9", principal=registered["certificateArn"])
    west.update_thing(thingName="pump-1", attributePayload={"attributes": {"site": "b"}})
    west_data.update_thing_shadow(thingName="pump-1", payload=b'{"state":{"reported":{"temp":31}}}')
    east.delete_thing(thingName="pump-2")  # deleted in the primary, not yet in the secondary

    failback = [*pair.cli_args(), "--direction", "secondary-to-primary"]
    failback += ["--journal", str(journal_path)]
    code, plan = cli("reconcile", *failback, "--dry-run")
    assert code == 1
    planned = {d["key"]: [op["op"] for op in d["ops"]] for d in plan["differences"]}
    assert planned["thing/pump-9"][0] == "CreateThing"
    assert planned["thing/pump-1"] == ["UpdateThing"]
    assert planned["shadow/pump-1"] == ["UpdateThingShadow"]
    assert "thing/pump-2" not in planned
    assert plan["source"] == WEST
    assert plan["target"] == EAST

    code, report = cli("reconcile", *failback)
    assert code == 0, report
    assert attributes(east, "pump-9") == {"site": "b"}
    principals = east.list_thing_principals(thingName="pump-9")["principals"]
    assert [p.rsplit("/", 1)[1] for p in principals] == [registered["certificateId"]]
    assert (
        east.describe_certificate(certificateId=registered["certificateId"])[
            "certificateDescription"
        ]["status"]
        == "ACTIVE"
    )
    assert attributes(east, "pump-1") == {"site": "b"}
    assert shadow_state(east_data, "pump-1")["reported"] == {"temp": 31}
    things = {t["thingName"] for t in east.list_things()["things"]}
    assert things == {"pump-1", "pump-9"}  # pump-2 not resurrected

    # Forward again: the deletion reaches the secondary; the newcomer stays.
    forward = [*pair.cli_args(), "--journal", str(journal_path)]
    code, report = cli("reconcile", *forward)
    assert code == 0, report
    assert report["differing"] == {"thing": 1}
    assert {t["thingName"] for t in west.list_things()["things"]} == {"pump-1", "pump-9"}
    assert cli("reconcile", *forward, "--dry-run")[1]["drift"] is False
    assert cli("reconcile", *failback, "--dry-run")[1]["drift"] is False


def test_auto_failback_copies_back_as_the_secondary_changes_and_after_the_primary_returns(
    pair: LocalPair, tmp_path: Path
) -> None:
    east, west = pair.iot(EAST), pair.iot(WEST)
    east_data, west_data = pair.data(EAST), pair.data(WEST)
    path = tmp_path / "replicator.db"
    lines: list[dict[str, Any]] = []
    stop = threading.Event()
    with Journal(path) as journal, Journal(path, queue="failback") as back_journal:
        forward = pair.engine(journal, thing_recheck_s=None, both_ways=True)
        back = forward.serving(back_journal)
        auto = AutoFailback(forward, back, report=lines.append, probe_interval_s=0.2)
        feeds = {
            region: FeedConfig(
                region=region,
                host=pair.brokers[region].host,
                port=pair.brokers[region].port,
                client_id=f"iotdr-replicator-{region}",
            )
            for region in (EAST, WEST)
        }
        service = threading.Thread(
            target=run_service,
            args=(forward, feeds[EAST]),
            kwargs={"report": lines.append, "stop": stop, "failback": (auto, feeds[WEST])},
        )
        service.start()
        try:
            wait_for("the service", lambda: bool(lines))
            time.sleep(0.5)  # the subscriptions are granted within a round trip
            east.create_thing(thingName="pump-1", attributePayload={"attributes": {"site": "a"}})
            east_data.update_thing_shadow(
                thingName="pump-1", payload=b'{"state":{"reported":{"temp":20}}}'
            )
            wait_for("pump-1 in the secondary", lambda: attributes(west, "pump-1") == {"site": "a"})
            wait_for(
                "its shadow in the secondary",
                lambda: shadow_state(west_data, "pump-1")["reported"] == {"temp": 20},
            )

            # The primary's control plane fails; devices work in the secondary.
            pair.plane.set_outage(EAST, "http503")
            west.create_thing(thingName="pump-9", attributePayload={"attributes": {"site": "b"}})
            west_data.update_thing_shadow(
                thingName="pump-1", payload=b'{"state":{"reported":{"temp":31}}}'
            )
            wait_for(  # the shadow service is up: copied back at once
                "the new temperature in the primary",
                lambda: shadow_state(east_data, "pump-1")["reported"] == {"temp": 31},
            )
            wait_for("the outage seen", lambda: auto.watch.down)
            pair.plane.set_outage(EAST, "up")
            wait_for("pump-9 in the primary", lambda: attributes(east, "pump-9") == {"site": "b"})
            wait_for(
                "the full pass",
                lambda: any(line["event"] == "replicator.failback.complete" for line in lines),
            )
        finally:
            stop.set()
            service.join(20)
        assert not service.is_alive()
    names = {t["thingName"] for t in east.list_things()["things"]}
    assert names == {t["thingName"] for t in west.list_things()["things"]} == {"pump-1", "pump-9"}
    assert attributes(west, "pump-1") == {"site": "a"}  # nothing ping-ponged
    assert auto.watch.outages == 1
