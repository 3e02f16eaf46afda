"""The drill's observer that ``bulk-provision`` makes: its policy, its record, its resumption.

The policy is judged by the project's IoT policy evaluator (the one the
local doors authorize with): it allows the drill's counter what it does
(connect as ``<id>-<shard>-<region>``, subscribe to ``iotdr/sim/+/telemetry``,
receive the telemetry) and nothing else. Provisioning runs against moto.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.iotdata.models import iotdata_backends

from replicator._errors import ConfigError
from replicator.aws._adapter import RegionConfig, build_region
from replicator.core._arns import ArnScope, rewrite_policy_document
from replicator.core._records import ObjectNamed, parse_message
from replicator.core._state import ObjectKey
from replicator.runtime._quotas import QuotaConfig, QuotaLimiter
from replicator.tools import _cli_fleet, _observer
from replicator.tools._bulk import RESULTS, BulkRun
from replicator.tools._devices import default_device_policy
from replicator.tools._iot_policy import (
    CONNECT,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    ConnectionContext,
    authorize,
    parse_policy,
)
from replicator.tools._observer import (
    DEFAULT_OBSERVER_ID,
    Observer,
    check_observer_id,
    observer_policy,
    observer_policy_name,
    replication_trigger,
    wanted,
)
from simulators.fleet._aws_target import load_identities
from simulators.fleet._cloud import TELEMETRY_FILTER
from simulators.fleet._device import telemetry_topic

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from replicator.aws._adapter import Boto3Region

EAST, WEST, ACCOUNT = "us-east-1", "us-west-2", "123456789012"
ID = DEFAULT_OBSERVER_ID
BASE = f"arn:aws:iot:{EAST}:{ACCOUNT}"


def _allowed(action: str, resource: str, client_id: str = f"{ID}-0-{EAST}") -> bool:
    document = parse_policy(observer_policy(EAST, ACCOUNT, ID))
    context = ConnectionContext(client_id=client_id, common_name=ID)
    return authorize([document], action, resource, context).allowed


def test_the_filter_is_the_one_the_drills_counter_subscribes_to() -> None:
    assert _observer.TELEMETRY_FILTER == TELEMETRY_FILTER
    assert _cli_fleet.DEFAULT_OBSERVER_ID == DEFAULT_OBSERVER_ID  # the CLI's copy


@pytest.mark.parametrize(
    "client_id", [f"{ID}-0-{EAST}", f"{ID}-12-{WEST}", f"{ID}-x"]
)  # fmt: skip
def test_the_observer_may_connect_as_its_stem_dash_anything(client_id: str) -> None:
    assert _allowed(CONNECT, f"{BASE}:client/{client_id}", client_id)


@pytest.mark.parametrize(
    "resource",
    [f"{BASE}:client/{ID}", f"{BASE}:client/{ID}x-0", f"{BASE}:client/sim-1",
     f"{BASE}:client/other-{ID}-0", f"arn:aws:iot:{WEST}:{ACCOUNT}:client/{ID}-0",
     f"arn:aws:iot:{EAST}:210987654321:client/{ID}-0"],
)  # fmt: skip
def test_no_other_client_id_region_or_account_may_connect(resource: str) -> None:
    assert not _allowed(CONNECT, resource, resource.rsplit("/", 1)[1])


def test_it_may_subscribe_to_the_telemetry_filter_only() -> None:
    assert _allowed(SUBSCRIBE, f"{BASE}:topicfilter/iotdr/sim/+/telemetry")
    for topic_filter in ("#", "iotdr/#", "iotdr/sim/#", "iotdr/sim/+/telemetry/#",
                         "iotdr/sim/sim-1/telemetry", "iotdr/sim/+/status", "iotdr/replicate",
                         "$aws/things/+/shadow/#", "$aws/events/#", "sim-1/#"):  # fmt: skip
        assert not _allowed(SUBSCRIBE, f"{BASE}:topicfilter/{topic_filter}"), topic_filter
    assert not _allowed(
        SUBSCRIBE, f"arn:aws:iot:{WEST}:{ACCOUNT}:topicfilter/iotdr/sim/+/telemetry"
    )


def test_it_may_receive_any_devices_telemetry_and_nothing_else() -> None:
    for device in ("sim-1", "pump-0042", "x"):
        assert _allowed(RECEIVE, f"{BASE}:topic/iotdr/sim/{device}/telemetry")
    for topic in ("iotdr/sim/sim-1/status", "iotdr/sim/telemetry", "iotdr/replicate",
                  "$aws/things/sim-1/shadow/update/accepted", "sim-1/telemetry",
                  "$aws/events/presence/connected/sim-1"):  # fmt: skip
        assert not _allowed(RECEIVE, f"{BASE}:topic/{topic}"), topic


def test_it_may_publish_nothing_nor_use_shadows_or_retained_messages() -> None:
    for topic in ("iotdr/sim/sim-1/telemetry", "iotdr/replicate", "$aws/things/sim-1/shadow/update",
                  f"{ID}/x"):  # fmt: skip
        assert not _allowed(PUBLISH, f"{BASE}:topic/{topic}"), topic
    for action in ("iot:RetainPublish", "iot:GetThingShadow", "iot:UpdateThingShadow",
                   "iot:DeleteThingShadow", "iot:ListNamedShadowsForThing"):  # fmt: skip
        assert not _allowed(action, f"{BASE}:thing/sim-1"), action
        assert not _allowed(action, f"{BASE}:topic/iotdr/sim/sim-1/telemetry"), action


def test_every_statement_is_one_exact_allow() -> None:
    document = json.loads(observer_policy(EAST, ACCOUNT, ID))
    assert [(s["Effect"], s["Action"]) for s in document["Statement"]] == [
        ("Allow", CONNECT), ("Allow", SUBSCRIBE), ("Allow", RECEIVE)]  # fmt: skip
    assert all(set(s) == {"Effect", "Action", "Resource"} for s in document["Statement"])


def test_a_bulk_provisioned_device_may_publish_its_own_drill_telemetry_only() -> None:
    device = parse_policy(default_device_policy(EAST, ACCOUNT))
    context = ConnectionContext(client_id="sim-1", thing_name="sim-1", common_name="sim-1")

    def allowed(action: str, resource: str) -> bool:
        return authorize([device], action, f"{BASE}:{resource}", context).allowed

    assert allowed(PUBLISH, f"topic/{telemetry_topic('sim-1')}")  # what the drill's devices send
    assert not allowed(PUBLISH, f"topic/{telemetry_topic('sim-2')}")
    assert not allowed(RECEIVE, f"topic/{telemetry_topic('sim-1')}")
    assert not allowed(SUBSCRIBE, "topicfilter/iotdr/sim/+/telemetry")
    assert not allowed(PUBLISH, "topic/iotdr/replicate")
    unattached = ConnectionContext(client_id="sim-1", common_name="sim-1")  # no thing: no topic
    assert not authorize([device], PUBLISH, f"{BASE}:topic/{telemetry_topic('sim-1')}",
                         unattached).allowed  # fmt: skip


def test_the_replicators_copy_for_the_secondary_is_the_secondarys_own_policy() -> None:
    copied = rewrite_policy_document(
        observer_policy_name(ID),
        observer_policy(EAST, ACCOUNT, ID),
        ArnScope(EAST, ACCOUNT),
        ArnScope(WEST, ACCOUNT),
    )
    assert json.loads(copied) == json.loads(observer_policy(WEST, ACCOUNT, ID))


@pytest.mark.parametrize(
    "client_id", ["", "a*", "obs?", "${iot:ClientId}", "a/b", "a+b", "a#", " a", "-a", "x" * 101]
)  # fmt: skip
def test_a_client_id_that_would_widen_or_break_the_policy_is_refused(client_id: str) -> None:
    with pytest.raises(ConfigError, match="observer client ID"):
        check_observer_id(client_id)
    with pytest.raises(ConfigError):
        observer_policy(EAST, ACCOUNT, client_id)


@pytest.mark.parametrize("client_id", [ID, "obs_1.drill:a", "x" * 100])
def test_plain_client_ids_are_taken(client_id: str) -> None:
    assert check_observer_id(client_id) == client_id


def test_the_trigger_is_one_the_replicator_reads_as_the_certificate() -> None:
    certificate_id = "ab" * 32
    record = parse_message(
        "iotdr/replicate", replication_trigger(Observer(ID, certificate_id=certificate_id)),
        region=EAST,
    )  # fmt: skip
    assert isinstance(record, ObjectNamed)
    assert record.key == ObjectKey.certificate(certificate_id)


def test_results_hold_the_observer_when_ready_and_its_certificate_before() -> None:
    pending = Observer(ID, certificate_id="c1", certificate_arn=f"{BASE}:cert/c1")
    assert pending.entries() == {"pendingObserver": {
        "client_id": ID, "certificate_id": "c1", "certificate_arn": f"{BASE}:cert/c1"}}  # fmt: skip
    assert Observer.from_results(pending.entries()) == pending
    ready = Observer(ID, certificate_id="c1", certificate_arn=f"{BASE}:cert/c1",
                     policy=f"{ID}-policy", ready=True)  # fmt: skip
    entry = ready.entries()["observer"]
    assert (entry["client_id"], entry["cert"], entry["key"]) == (
        ID, "observer.certificate.pem", "observer.private.key")  # fmt: skip
    assert Observer.from_results(ready.entries()) == ready
    assert Observer(ID).entries() == {}
    assert Observer.from_results({"devices": []}) is None


def test_which_observer_a_run_keeps_or_makes(tmp_path: Path) -> None:
    pending = Observer(ID, certificate_id="c1")
    ready = Observer(ID, certificate_id="c1", policy="p", ready=True)
    assert wanted(None, ID, where=tmp_path) == Observer(ID)
    assert wanted(None, None, where=tmp_path) is None
    assert wanted(pending, ID, where=tmp_path) is pending
    assert wanted(ready, None, where=tmp_path) is ready  # made: kept, not undone
    with pytest.raises(ConfigError, match="without --no-observer"):
        wanted(pending, None, where=tmp_path)
    with pytest.raises(ConfigError, match=f"--observer-id {ID}"):
        wanted(pending, "other", where=tmp_path)


# -- provisioning, against moto ---------------------------------------------------------------


@pytest.fixture
def east() -> Iterator[tuple[Boto3Region, Any]]:
    with mock_aws():
        limiter = QuotaLimiter(QuotaConfig.with_overrides({"default": 10_000}))
        data = f"https://data-ats.iot.{EAST}.amazonaws.com"
        config = RegionConfig(region=EAST, data_endpoint_url=data)
        yield build_region(config, limiter=limiter), boto3.client("iot", region_name=EAST)


def _published() -> list[tuple[str, Any]]:
    return list(iotdata_backends[ACCOUNT][EAST].published_payloads)


def _open(tmp_path: Path, *, fresh: bool) -> BulkRun:
    run = BulkRun.open(tmp_path, "dev-", 2, EAST, algorithm="ec", fresh=fresh)
    run.want_observer(ID)
    return run


def test_a_run_makes_the_observer_the_drill_reads(
    east: tuple[Boto3Region, Any], tmp_path: Path
) -> None:
    client, iot = east
    run = _open(tmp_path, fresh=True)
    run.generate_keys(processes=1, progress=None)
    run.provision(client, workers=1, progress=None)
    run.make_observer(client)
    assert run.observer_error is None
    results = json.loads((run.directory / RESULTS).read_text())
    assert results["status"] == "complete"
    assert "pendingObserver" not in results
    entry = results["observer"]
    assert (run.directory / entry["key"]).stat().st_mode & 0o777 == 0o600
    found = iot.describe_certificate(certificateId=entry["certificate_id"])
    assert found["certificateDescription"]["status"] == "ACTIVE"
    assert (run.directory / entry["cert"]).read_text() == found["certificateDescription"][
        "certificatePem"
    ]
    policies = iot.list_attached_policies(target=entry["certificate_arn"])["policies"]
    assert [p["policyName"] for p in policies] == [f"{ID}-policy"]
    document = iot.get_policy(policyName=f"{ID}-policy")["policyDocument"]
    assert json.loads(document) == json.loads(observer_policy(EAST, ACCOUNT, ID))
    assert iot.list_principal_things(principal=entry["certificate_arn"])["things"] == []

    identities = load_identities(run.directory)
    assert identities.observer is not None
    assert identities.observer.name == ID
    assert identities.observer.cert == run.directory / "observer.certificate.pem"
    assert [d.name for d in identities.devices] == ["dev-0", "dev-1"]
    assert run.observer_replication == "asked"
    trigger = json.dumps({"kind": "certificate", "name": entry["certificate_id"]}).encode()
    assert _published() == [("iotdr/replicate", trigger)]


def test_a_run_stopped_after_the_observers_certificate_finishes_it_without_another(
    east: tuple[Boto3Region, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, iot = east
    run = _open(tmp_path, fresh=True)
    run.generate_keys(processes=1, progress=None)
    run.provision(client, workers=1, progress=None)

    def stopped(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_observer, "_policy", stopped)
    with pytest.raises(KeyboardInterrupt):
        run.make_observer(client)
    results = json.loads((run.directory / RESULTS).read_text())
    assert results["status"] == "in_progress"
    assert "observer" not in results
    made = results["pendingObserver"]["certificate_id"]
    assert load_identities(run.directory).observer is None  # not usable yet

    monkeypatch.undo()
    again = _open(tmp_path, fresh=False)
    assert (again.directory, again.resumed) == (run.directory, True)
    again.provision(client, workers=1, progress=None)
    again.make_observer(client)
    results = json.loads((run.directory / RESULTS).read_text())
    assert results["status"] == "complete"
    assert results["observer"]["certificate_id"] == made
    assert [topic for topic, _ in _published()] == ["iotdr/replicate"]  # once, when made
    assert len(iot.list_certificates()["certificates"]) == 3  # two devices, one observer
    assert [p["policyName"] for p in iot.list_attached_policies(
        target=results["observer"]["certificate_arn"])["policies"]] == [f"{ID}-policy"]  # fmt: skip

    # A finished run is not resumed; a new run makes its own observer with the same policy.
    other = _open(tmp_path / "next", fresh=True)
    other.make_observer(client)
    assert other.observer is not None
    assert other.observer.ready
    assert other.observer.certificate_id != made
    assert len(iot.list_policies()["policies"]) == 2  # the devices' and the observer's


def test_an_observer_the_replicator_could_not_be_asked_about_is_made_and_says_why(
    east: tuple[Boto3Region, Any], tmp_path: Path
) -> None:
    client, _ = east
    run = _open(tmp_path, fresh=True)
    with Stubber(client.data) as stubber:
        stubber.add_client_error("publish", "AccessDeniedException", "no iot:Publish", 403)
        run.make_observer(client)
    assert run.observer is not None
    assert run.observer.ready
    assert run.observer_error is None
    assert run.observer_replication is not None
    assert run.observer_replication.startswith("not asked: ")
    assert "no iot:Publish" in run.observer_replication


def test_without_the_observer_the_run_is_complete_without_one(
    east: tuple[Boto3Region, Any], tmp_path: Path
) -> None:
    client, _ = east
    run = BulkRun.open(tmp_path, "dev-", 2, EAST, algorithm="ec", fresh=True)
    run.want_observer(None)
    run.generate_keys(processes=1, progress=None)
    run.provision(client, workers=1, progress=None)
    run.make_observer(client)
    results = json.loads((run.directory / RESULTS).read_text())
    assert results["status"] == "complete"
    assert "observer" not in results
    assert not list(run.directory.glob("observer.*"))
    assert load_identities(run.directory).observer is None
