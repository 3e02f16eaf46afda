"""The replicator on the local regions: control plane, shadow services, brokers, the MQTT feed.

The primary's registry events and shadow documents arrive over MQTT from the
region broker, the engine applies them through boto3 to the secondary; the
control plane throttles at AWS's TPS as AWS does. Every wait is a poll with a
deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import boto3
import pytest
from botocore.config import Config

from replicator.aws._adapter import RegionConfig, build_region
from replicator.runtime._anti_entropy import ALIVE_AT, AntiEntropy, AntiEntropyConfig
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._feed import FeedConfig
from replicator.runtime._host import run_service
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaLimiter
from simulators.controlplane import start_control_plane
from simulators.shadows import ShadowService
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from mypy_boto3_iot import IoTClient
    from mypy_boto3_iot_data import IoTDataPlaneClient

    from simulators import Broker
    from simulators.controlplane import ControlPlane
    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration

EAST, WEST = "us-east-1", "us-west-2"
WAIT_S = 20.0


@dataclass
class LocalPair:
    """Two local regions: control plane, brokers and shadow services."""

    plane: ControlPlane
    brokers: dict[str, Broker]
    shadows: dict[str, ShadowService]

    def iot(self, region: str) -> IoTClient:
        assert self.plane.url.startswith("http://127.0.0.1:")
        return boto3.client(
            "iot",
            region_name=region,
            endpoint_url=self.plane.url,
            config=Config(retries={"mode": "adaptive", "max_attempts": 10}),
        )

    def data(self, region: str) -> IoTDataPlaneClient:
        return boto3.client("iot-data", region_name=region, endpoint_url=self.shadows[region].url)

    def region_config(self, region: str) -> RegionConfig:
        return RegionConfig(
            region=region, endpoint_url=self.plane.url, data_endpoint_url=self.shadows[region].url
        )

    def cli_args(self) -> list[str]:
        return [
            "--primary-region", EAST, "--secondary-region", WEST,
            "--primary-endpoint-url", self.plane.url, "--secondary-endpoint-url", self.plane.url,
            "--primary-data-endpoint-url", self.shadows[EAST].url,
            "--secondary-data-endpoint-url", self.shadows[WEST].url,
        ]  # fmt: skip

    def engine(self, journal: Journal, **config: Any) -> Engine:
        limiter = QuotaLimiter()
        return Engine(
            source=build_region(self.region_config(EAST), limiter=limiter),
            target=build_region(self.region_config(WEST), limiter=limiter),
            journal=journal,
            config=EngineConfig(**config),
        )


@pytest.fixture
def pair(region_brokers: dict[str, Broker], tmp_path: Path) -> Iterator[LocalPair]:
    if region_brokers[EAST].kind != "mosquitto":
        pytest.skip("registry events need mosquitto (amqtt refuses topics starting with '$')")
    addresses = {region: (b.host, b.port) for region, b in region_brokers.items()}
    services: dict[str, ShadowService] = {}
    with start_control_plane(state_dir=tmp_path, brokers=addresses) as plane:
        try:
            for region, broker in region_brokers.items():
                services[region] = ShadowService(
                    region, http_host=broker.host, broker=(broker.host, broker.port)
                )
                services[region].start()
            yield LocalPair(plane, region_brokers, services)
        finally:
            for service in services.values():
                service.stop()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout_s} s")


class ServiceThread:
    """``run_service`` of ``engine`` and ``feed`` in a thread, as a context manager."""

    def __init__(self, engine: Engine, feed: FeedConfig) -> None:
        self.engine = engine
        self.feed = feed
        self.stop = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.thread = threading.Thread(
            target=run_service,
            args=(self.engine, self.feed),
            kwargs={"report": self.lines.append, "stop": self.stop},
        )

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for("the feed's subscriptions", lambda: bool(self.lines))
        time.sleep(0.5)  # the subscription is granted within a round trip
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


class Service(ServiceThread):
    """The feed on the primary's broker, the engine, a journal."""

    def __init__(self, pair: LocalPair, journal: Journal, **config: Any) -> None:
        broker = pair.brokers[EAST]
        feed = FeedConfig(
            region=EAST, host=broker.host, port=broker.port, client_id="iotdr-replicator-test"
        )
        super().__init__(pair.engine(journal, **config), feed)


def attributes(client: IoTClient, name: str) -> dict[str, str]:
    return dict(client.describe_thing(thingName=name)["attributes"])


def shadow_state(client: IoTDataPlaneClient, thing: str, name: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"thingName": thing} | ({"shadowName": name} if name else {})
    return dict(json.loads(client.get_thing_shadow(**kwargs)["payload"].read())["state"])


def test_registry_events_and_shadow_documents_replicate_over_the_feed(  # noqa: PLR0915 - one story
    pair: LocalPair, tmp_path: Path, fleet_pki: FleetFixture
) -> None:
    east, west = pair.iot(EAST), pair.iot(WEST)
    east_data, west_data = pair.data(EAST), pair.data(WEST)
    with (
        Journal(tmp_path / "journal.db") as journal,
        Service(pair, journal, thing_recheck_s=1.0) as service,
    ):
        east.create_thing_type(thingTypeName="sensor")
        east.create_thing_group(thingGroupName="root")
        east.create_thing_group(thingGroupName="child", parentGroupName="root")
        device = fleet_pki.pki.issue_device("pump-1")
        cert = east.register_certificate_without_ca(
            certificatePem=device.cert_path.read_text(), status="ACTIVE"
        )
        east.create_policy(
            policyName="fleet",
            policyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "iot:Connect",
                            "Resource": f"arn:aws:iot:{EAST}:123456789012:client/pump-1",
                        }
                    ],
                }
            ),
        )
        east.attach_policy(policyName="fleet", target=cert["certificateArn"])
        east.create_thing(
            thingName="pump-1",
            thingTypeName="sensor",
            attributePayload={"attributes": {"a": "1", "b": "2"}},
        )
        east.attach_thing_principal(
            thingName="pump-1", principal=cert["certificateArn"]
        )  # no event: the recheck
        east.add_thing_to_thing_group(thingGroupName="child", thingName="pump-1")

        wait_for(
            "the thing in the secondary", lambda: attributes(west, "pump-1") == {"a": "1", "b": "2"}
        )
        wait_for(
            "its certificate",
            lambda: len(west.list_thing_principals(thingName="pump-1")["principals"]) == 1,
        )
        wait_for(
            "its group",
            lambda: (
                [
                    g["groupName"]
                    for g in west.list_thing_groups_for_thing(thingName="pump-1")["thingGroups"]
                ]
                == ["child"]
            ),
        )
        copied = west.describe_certificate(certificateId=device.certificate_id)[
            "certificateDescription"
        ]
        assert copied["status"] == "ACTIVE"
        policy = json.loads(west.get_policy(policyName="fleet")["policyDocument"])
        assert (
            policy["Statement"][0]["Resource"] == f"arn:aws:iot:{WEST}:123456789012:client/pump-1"
        )

        east.update_thing(
            thingName="pump-1",
            attributePayload={"attributes": {"a": "9", "b": ""}, "merge": True},
            removeThingType=True,
        )
        wait_for(
            "the merged update and the type removal",
            lambda: (
                attributes(west, "pump-1") == {"a": "9"}
                and "thingTypeName" not in west.describe_thing(thingName="pump-1")
            ),
        )
        east.deprecate_thing_type(thingTypeName="sensor")
        wait_for(
            "the deprecation",
            lambda: west.describe_thing_type(thingTypeName="sensor")["thingTypeMetadata"][
                "deprecated"
            ],
        )
        east.update_thing_group(
            thingGroupName="root", thingGroupProperties={"thingGroupDescription": "plant"}
        )
        wait_for(
            "the group update",
            lambda: (
                west.describe_thing_group(thingGroupName="root")["thingGroupProperties"].get(
                    "thingGroupDescription"
                )
                == "plant"
            ),
        )

        # Shadows, classic and named; the secondary's documents carry the origin marker.
        watcher = ProbeClient("shadow-watcher")
        assert watcher.connect(pair.brokers[WEST].host, pair.brokers[WEST].port), watcher.reason
        watcher.client.subscribe("$aws/things/+/shadow/#", qos=1)
        time.sleep(0.3)
        east_data.update_thing_shadow(
            thingName="pump-1", payload=b'{"state":{"reported":{"rpm":1200}}}'
        )
        east_data.update_thing_shadow(
            thingName="pump-1", shadowName="cfg", payload=b'{"state":{"desired":{"mode":"eco"}}}'
        )
        wait_for(
            "the classic shadow",
            lambda: shadow_state(west_data, "pump-1") == {"reported": {"rpm": 1200}},
        )
        wait_for(
            "the named shadow",
            lambda: shadow_state(west_data, "pump-1", "cfg").get("desired") == {"mode": "eco"},
        )
        tokens = set()
        while True:
            try:
                topic, payload = watcher.messages.get(timeout=1.0)
            except queue.Empty:
                break
            if topic.endswith("/update/documents"):
                tokens.add(json.loads(payload).get("clientToken"))
        watcher.close()
        assert tokens == {f"iotdr:{EAST}"}

        east_data.delete_thing_shadow(thingName="pump-1", shadowName="cfg")
        wait_for(
            "the named shadow's deletion",
            lambda: (
                "cfg" not in west_data.list_named_shadows_for_thing(thingName="pump-1")["results"]
            ),
        )

        east.detach_thing_principal(thingName="pump-1", principal=cert["certificateArn"])
        east.delete_thing(thingName="pump-1")
        wait_for("the thing's deletion", lambda: not west.list_things()["things"])
        assert west.describe_certificate(
            certificateId=device.certificate_id
        )  # kept: still in the primary

        # A malformed message on the feed is dead-lettered with its reason, and nothing stops.
        probe = ProbeClient("bad-publisher")
        assert probe.connect(pair.brokers[EAST].host, pair.brokers[EAST].port)
        probe.client.publish("$aws/events/thing/x/created", b"{not json", qos=1).wait_for_publish(5)
        probe.close()
        wait_for("the dead letter", lambda: journal.counts(time.time()).dead_letters == 1)
        assert "not JSON" in journal.dead_letters()[0].reason
        assert journal.counts(time.time()).dead == 0
    stopped = service.lines[-1]
    assert stopped["event"] == "replicator.stopped"
    assert stopped["dead"] == 0
    assert stopped["feed"]["accepted"] > 10


def test_reconcile_reports_drift_in_a_dry_run_then_repairs_it(
    pair: LocalPair, tmp_path: Path
) -> None:
    from device_agent.cli import main

    east, west = pair.iot(EAST), pair.iot(WEST)
    east.create_thing(thingName="only-east", attributePayload={"attributes": {"x": "1"}})
    west.create_thing(thingName="only-west")
    east.create_thing_group(thingGroupName="g")
    pair.data(EAST).update_thing_shadow(
        thingName="only-east", payload=b'{"state":{"reported":{"v":1}}}'
    )

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["replicator", "reconcile", *pair.cli_args(), "--dry-run", "--json"])
    assert code == 1
    report = json.loads(buffer.getvalue())
    assert report["differing"] == {"thing": 2, "thingGroup": 1, "shadow": 1}
    keys = {d["key"]: [op["op"] for op in d["ops"]] for d in report["differences"]}
    assert keys["thing/only-east"] == ["CreateThing"]
    # only in the secondary, never replicated there (no journal): kept and reported
    assert keys["thing/only-west"] == ["Conflict"]
    assert keys["shadow/only-east"] == ["UpdateThingShadow"]
    assert west.list_thing_groups()["thingGroups"] == []  # a dry run writes nothing

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["replicator", "reconcile", *pair.cli_args(), "--json"]) == 0
    assert sorted(t["thingName"] for t in west.list_things()["things"]) == [
        "only-east",
        "only-west",
    ]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["replicator", "reconcile", *pair.cli_args(), "--delete-target-only"]) == 0
    assert [t["thingName"] for t in west.list_things()["things"]] == ["only-east"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["replicator", "reconcile", *pair.cli_args(), "--dry-run", "--json"]) == 0
    assert json.loads(buffer.getvalue())["drift"] is False


def test_a_secondary_that_is_down_buffers_in_the_journal_and_catches_up(
    pair: LocalPair, tmp_path: Path
) -> None:
    east, west = pair.iot(EAST), pair.iot(WEST)
    with Journal(tmp_path / "journal.db") as journal, Service(pair, journal, thing_recheck_s=None):
        pair.plane.set_outage(WEST, "http503")
        for n in range(5):
            east.create_thing(thingName=f"t{n}")
        wait_for("the changes journaled", lambda: journal.counts(time.time()).pending == 5)
        wait_for(
            "a failed attempt", lambda: any(attempts for _, attempts, _ in journal.rows("pending"))
        )
        assert journal.counts(time.time()).dead == 0
        pair.plane.set_outage(WEST, "up")
        wait_for("the catch-up", lambda: len(west.list_things()["things"]) == 5, timeout_s=60)


def test_anti_entropy_converges_what_the_feed_lost_while_the_service_was_down(
    pair: LocalPair, tmp_path: Path, fleet_pki: FleetFixture
) -> None:
    """Churn while the service is away longer than the broker keeps its session; a restart's
    first anti-entropy pass brings the secondary back in line (#13 item 10)."""
    east, west = pair.iot(EAST), pair.iot(WEST)
    path = tmp_path / "journal.db"
    with Journal(path) as journal, Service(pair, journal, thing_recheck_s=None):
        east.create_thing(thingName="kept")
        east.create_thing(thingName="doomed")
        wait_for(
            "the things replicated",
            lambda: {t["thingName"] for t in west.list_things()["things"]} == {"kept", "doomed"},
        )
    # Away: five devices registered (certificates publish no event), their things created
    # and deleted, a synced thing deleted, a new one created.
    certificates = []
    for n in range(5):
        device = fleet_pki.pki.issue_device(f"gone-{n}")
        registered = east.register_certificate_without_ca(
            certificatePem=device.cert_path.read_text(), status="ACTIVE"
        )
        certificates.append(registered["certificateId"])
        east.create_thing(thingName=f"gone-{n}")
        east.delete_thing(thingName=f"gone-{n}")
    east.delete_thing(thingName="doomed")
    east.create_thing(thingName="new")
    now = time.time()
    with Journal(path) as journal:  # two hours away, as the journal will tell
        journal.set_meta(ALIVE_AT, repr(now - 7200.0), now=now)

    broker = pair.brokers[EAST]
    # A session the broker no longer has: the queued events expired with the old one.
    feed = FeedConfig(region=EAST, host=broker.host, port=broker.port, client_id="iotdr-after")
    with Journal(path) as journal:
        engine = pair.engine(journal, thing_recheck_s=None)
        anti = AntiEntropy(
            engine,
            AntiEntropyConfig(first_pass_delay_s=0.5, heartbeat_s=0.5, workers=4),
            limiter=getattr(engine.target, "limiter", None),
        )
        stop = threading.Event()
        lines: list[dict[str, Any]] = []
        service = threading.Thread(
            target=run_service,
            args=(engine, feed),
            kwargs={"report": lines.append, "stop": stop, "anti_entropy": anti},
        )
        service.start()
        try:
            wait_for("the first anti-entropy pass", lambda: anti.passes >= 1, timeout_s=90.0)
        finally:
            stop.set()
            service.join(30)
        assert not service.is_alive()
    things = {t["thingName"] for t in west.list_things()["things"]}
    assert things == {"kept", "new"}
    in_secondary = {c["certificateId"] for c in west.list_certificates()["certificates"]}
    assert set(certificates) <= in_secondary
    assert lines[0]["anti_entropy_interval_s"] == AntiEntropyConfig().interval_s
