"""``--target aws``: the target's configuration, results.json, the plan check, the Route 53 flip.

Nothing here reaches AWS: the Route 53 client is a real boto3 client with
botocore's Stubber, which checks every request against the API's model.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import Stubber

from simulators._errors import SimulatorError
from simulators.fleet._aws_stage import AwsClients, AwsStage
from simulators.fleet._aws_target import (
    AwsTarget,
    Route53Flip,
    check_aws_plan,
    load_identities,
    load_target_file,
    route53_change,
    system_resolver,
)
from simulators.fleet._records import RunRecord
from simulators.fleet._scenario import ScenarioError, parse_scenario
from simulators.fleet._shard import Shard

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

E, W = "us-east-1", "us-west-2"
ENDPOINTS = {
    E: "abc123-ats.iot.us-east-1.amazonaws.com",
    W: "abc123-ats.iot.us-west-2.amazonaws.com",
}


def _identities(directory: Path, count: int = 3, *, observer: bool = True) -> Path:
    (directory / "certs").mkdir(parents=True)
    devices = []
    for i in range(1, count + 1):
        name = f"sim-{i:05d}"
        for suffix in ("crt", "key"):
            (directory / "certs" / f"{name}.{suffix}").write_text("pem")
        devices.append(
            {"thing_name": name, "cert": f"certs/{name}.crt", "key": f"certs/{name}.key"}
        )
    results: dict[str, Any] = {
        "format": "iotdr-bulk-provision/1",
        "regions": [E, W],
        "devices": devices,
    }
    if observer:
        (directory / "observer.crt").write_text("pem")
        (directory / "observer.key").write_text("pem")
        results["observer"] = {
            "client_id": "iotdr-observer",
            "cert": "observer.crt",
            "key": "observer.key",
        }
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def _target(tmp_path: Path, **changes: Any) -> AwsTarget:
    values: dict[str, Any] = {
        "device_name": "iot.example.com",
        "endpoints": ENDPOINTS,
        "identities": tmp_path,
        "ca": tmp_path / "AmazonRootCA1.pem",
        "dns": ("10.0.0.2", 53),
        "route53": Route53Flip(hosted_zone_id="Z0123456789ABC", record_name="iot.example.com"),
    }
    return AwsTarget(**{**values, **changes})


def _scenario(steps: str, *, regions: str = "[us-east-1, us-west-2]") -> Any:
    text = (
        f"name: drill\ndevices: 3\nduration_s: 60\nregions: {regions}\n"
        f"replication: off\ntimeline:\n{steps}"
    )
    return parse_scenario(text, source="drill.yaml")


# -- the target ----------------------------------------------------------------------------


def test_a_target_file_with_options_over_it(tmp_path: Path) -> None:
    path = tmp_path / "aws.toml"
    path.write_text(
        'device_name = "iot.example.com"\nidentities = "fleet"\nca = "AmazonRootCA1.pem"\n'
        'dns = "10.0.0.2:53"\n[endpoints]\n'
        + "".join(f'{region} = "{host}"\n' for region, host in ENDPOINTS.items())
        + '[route53]\nhosted_zone_id = "Z0123456789ABC"\nttl = 15\n'
    )
    target = load_target_file(path, device_name="devices.example.com", endpoints={})
    assert target.device_name == "devices.example.com"  # the option wins
    assert dict(target.endpoints) == ENDPOINTS  # an empty option does not
    assert target.identities == tmp_path / "fleet"  # relative to the file
    assert target.ca == tmp_path / "AmazonRootCA1.pem"
    assert target.dns == ("10.0.0.2", 53)
    assert target.route53 == Route53Flip(  # the record is the devices' name by default
        hosted_zone_id="Z0123456789ABC", record_name="devices.example.com", ttl=15
    )
    assert list(target.endpoints) == [E, W]  # the primary first, as written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_name = "x.example.com"\nregion = "us-east-1"\n', "unknown key"),
        ('device_name = "x.example.com"\n', "needs identities, ca, endpoints"),
        ("device_name = \n", "cannot be read"),
    ],
)
def test_a_bad_target_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "aws.toml"
    path.write_text(text)
    with pytest.raises(SimulatorError, match=message):
        load_target_file(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device_name": "not a name"}, "not a DNS name"),
        ({"endpoints": {E: ENDPOINTS[E]}}, "at least two regions"),
        ({"endpoints": {E: ENDPOINTS[W], W: ENDPOINTS[W]}}, "is not us-east-1's ATS endpoint"),
        ({"port": 0}, "out of range"),
    ],
)
def test_the_target_is_checked(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SimulatorError, match=message):
        _target(tmp_path, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hosted_zone_id": "zone one"}, "is not a zone id"),
        ({"record_name": "-"}, "not a DNS name"),
        ({"ttl": -1}, "out of range"),
    ],
)
def test_the_route53_record_is_checked(changes: dict[str, Any], message: str) -> None:
    values = {"hosted_zone_id": "/hostedzone/Z0123", "record_name": "iot.example.com", **changes}
    with pytest.raises(SimulatorError, match=message):
        Route53Flip(**values)


def test_the_system_resolver(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 8.8.8.8\n")
    assert system_resolver(conf) == ("10.0.0.2", 53)
    conf.write_text("search example.com\n")
    with pytest.raises(SimulatorError, match="no nameserver"):
        system_resolver(conf)


# -- results.json --------------------------------------------------------------------------


def test_results_json_is_read_in_order(tmp_path: Path) -> None:
    found = load_identities(_identities(tmp_path, 3))
    assert [d.name for d in found.devices] == ["sim-00001", "sim-00002", "sim-00003"]
    assert found.devices[0].cert == tmp_path / "certs" / "sim-00001.crt"
    assert found.observer is not None
    assert found.observer.name == "iotdr-observer"
    assert found.regions == (E, W)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(format="other/1"), "format 'other/1'"),
        (lambda r: r.update(devices=[]), "non-empty list"),
        (lambda r: r["devices"][1].pop("key"), r"devices\[1\]: key missing"),
        (lambda r: r["devices"][2].update(cert="certs/none.crt"), r"devices\[2\]: .*not found"),
        (lambda r: r["devices"][2].update(thing_name="sim-00001"), "given twice"),
        (lambda r: r["observer"].pop("client_id"), "observer: client_id missing"),
    ],
)
def test_bad_results_json_is_one_line(tmp_path: Path, change: Any, message: str) -> None:
    _identities(tmp_path, 3)
    results = json.loads((tmp_path / "results.json").read_text())
    change(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(SimulatorError, match=message):
        load_identities(tmp_path)


def test_missing_results_json(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="bulk-provision"):
        load_identities(tmp_path)


# -- the plan ------------------------------------------------------------------------------


def test_device_side_faults_and_a_route53_flip_run(tmp_path: Path) -> None:
    scenario = _scenario(
        "  - {at: 10, dns: {cname: us-west-2}}\n"
        "  - {at: 20, heal: {region: us-east-1}}\n"
        "  - {at: 30, dns: {cname: us-east-1}}\n"
    )
    notes = check_aws_plan(scenario, _target(tmp_path))
    assert any("CONNECT 500/s" in note for note in notes)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{at: 5, fault: {region: us-east-1, mode: down}}", "cannot be injected into AWS IoT"),
        ("{at: 5, fault: {region: us-east-1, mode: control-plane-down}}", "side: devices"),
        ("{at: 5, replicator: stop}", "replicator steps"),
        ("{at: 5, create_devices: 3}", "bulk-provision"),
    ],
)
def test_steps_aws_cannot_take_are_refused_in_one_line(
    tmp_path: Path, step: str, message: str
) -> None:
    with pytest.raises(ScenarioError, match=message) as caught:
        check_aws_plan(_scenario(f"  - {step}\n"), _target(tmp_path))
    text = str(caught.value)
    assert text.startswith("scenario drill: timeline[0]: ")
    assert text.endswith("(--target aws)")
    assert "\n" not in text


def test_a_dns_step_needs_a_route53_record(tmp_path: Path) -> None:
    scenario = _scenario("  - {at: 5, dns: {cname: us-west-2}}\n")
    with pytest.raises(ScenarioError, match="hosted_zone_id"):
        check_aws_plan(scenario, _target(tmp_path, route53=None))


def test_a_region_without_an_endpoint(tmp_path: Path) -> None:
    scenario = _scenario(
        "  - {at: 5, heal: {region: eu-west-1}}\n", regions="[eu-west-1, us-west-2]"
    )
    with pytest.raises(ScenarioError, match="no AWS endpoint for eu-west-1"):
        check_aws_plan(scenario, _target(tmp_path))


# -- the stage: the Route 53 change it sends ---------------------------------------------


@pytest.fixture
def route53() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "route53",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber


def _stage(tmp_path: Path, client: Any, shard: Shard | None = None) -> AwsStage:
    target = _target(tmp_path)
    return AwsStage(
        _scenario("  - {at: 10, dns: {cname: us-west-2}}\n"),
        target,
        load_identities(_identities(tmp_path / "ids", 5)),
        shard=shard or Shard(index=0, count=1),
        clients=AwsClients(route53=client, iot_data={}),
    )


def test_a_dns_step_upserts_the_cname(tmp_path: Path, route53: tuple[Any, Stubber]) -> None:
    client, stubber = route53
    expected = {
        "HostedZoneId": "Z0123456789ABC",
        "ChangeBatch": {
            "Comment": "iotdr sim run drill: devices to us-west-2",
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": "iot.example.com.",
                        "Type": "CNAME",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": ENDPOINTS[W]}],
                    },
                }
            ],
        },
    }
    answer = {"ChangeInfo": {"Id": "/change/C1", "Status": "PENDING", "SubmittedAt": "2026-12-04"}}
    stubber.add_response("change_resource_record_sets", answer, expected)
    stage = _stage(tmp_path, client)
    assert stage.flip(W) == "/change/C1"
    stubber.assert_no_pending_responses()
    assert route53_change(stage.target.route53, ENDPOINTS[W], comment="x")["HostedZoneId"] == (  # type: ignore[arg-type]
        "Z0123456789ABC"
    )


def test_route53_refusing_is_one_line(tmp_path: Path, route53: tuple[Any, Stubber]) -> None:
    client, stubber = route53
    stubber.add_client_error(
        "change_resource_record_sets", "NoSuchHostedZone", "No hosted zone found with ID"
    )
    with pytest.raises(SimulatorError, match=r"Route 53 refused pointing iot\.example\.com at"):
        _stage(tmp_path, client).flip(W)


@pytest.mark.asyncio
async def test_only_the_owner_shard_flips(tmp_path: Path, route53: tuple[Any, Stubber]) -> None:
    client, _ = route53  # no response queued: a call would fail
    stage = _stage(tmp_path, client, Shard(index=1, count=2))
    step = stage.scenario.timeline[0]
    assert await stage.apply(step) == "cname"


def test_the_devices_and_their_endpoints(tmp_path: Path, route53: tuple[Any, Stubber]) -> None:
    stage = _stage(tmp_path, route53[0])
    assert stage.fleet_names(2) == ["sim-00001", "sim-00002"]
    with pytest.raises(SimulatorError, match="has 5 identities and the run needs 9"):
        stage.fleet_names(9)
    entries = stage.provision(["sim-00002"])
    assert entries == [
        {
            "name": "sim-00002",
            "cert": str(tmp_path / "ids" / "certs" / "sim-00002.crt"),
            "key": str(tmp_path / "ids" / "certs" / "sim-00002.key"),
        }
    ]
    endpoints = stage.endpoints()
    assert endpoints["dns"] == "10.0.0.2:53"
    assert endpoints["regions"][E] == {"endpoint": ENDPOINTS[E], "mqtts": f"{ENDPOINTS[E]}:8883"}


def test_no_observer_is_one_line(tmp_path: Path) -> None:
    stage = AwsStage(
        _scenario("  - {at: 10, dns: {cname: us-west-2}}\n"),
        _target(tmp_path),
        load_identities(_identities(tmp_path / "ids", 1, observer=False)),
        shard=Shard(index=0, count=1),
        clients=AwsClients(route53=None, iot_data={}),
    )
    with contextlib.ExitStack() as stack, pytest.raises(SimulatorError, match="no observer"):
        stage.start(stack, RunRecord(scenario="drill"))


def test_results_json_as_iotdr_tools_bulk_provision_writes_it(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    devices = []
    for i in range(2):
        (tmp_path / f"dev{i}.private.key").write_text("key")
        devices.append(
            {
                "thingName": f"dev{i}",
                "certificateId": "ab" * 32,
                "certificateArn": f"arn:aws:iot:{E}:123456789012:cert/{'ab' * 32}",
                "certificatePem": pem,
                "privateKey": f"dev{i}.private.key",
            }
        )
    (tmp_path / "dev1.certificate.pem").write_text("already extracted")
    results = {"format": "iotdr-bulk-provision/1", "region": E, "devices": devices}
    (tmp_path / "results.json").write_text(json.dumps(results))

    found = load_identities(tmp_path)

    assert [d.name for d in found.devices] == ["dev0", "dev1"]
    assert found.devices[0].cert == tmp_path / "dev0.certificate.pem"
    assert found.devices[0].key == tmp_path / "dev0.private.key"
    assert (tmp_path / "dev0.certificate.pem").read_text() == pem
    assert (tmp_path / "dev1.certificate.pem").read_text() == "already extracted"  # kept
    assert found.regions == (E,)


def test_a_bulk_provision_entry_without_its_certificate_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dev0.private.key").write_text("key")
    device = {"thingName": "dev0", "privateKey": "dev0.private.key"}
    results = {"format": "iotdr-bulk-provision/1", "region": E, "devices": [device]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(SimulatorError, match=r"devices\[0\]: no certificatePem"):
        load_identities(tmp_path)
