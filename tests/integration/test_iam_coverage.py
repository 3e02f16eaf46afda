"""IAM coverage: the policies of ``iotdr replicator iam-policy`` grant exactly what the code calls.

``tests/conftest.py`` records every AWS API call made in this process while the
tests run (botocore's ``provide-client-params`` event), under the identity whose code
made it. This module first drives every identity's code through its real entry
points: the replicator forward and back through ``iotdr replicator reconcile``
and the composition root, its Lambda handler on an SQS batch, the JITR handler's
``iotdr replicator jitr --once``, all against the local regions (control plane,
shadow services); the iot-data endpoint's discovery and the region template's
setup function against moto (the local control plane's endpoint name is not
an address). Then, after every other test of the session (the audit is
collected last), it compares the record with the widest policy of each identity:

- a call that the identity's policy does not grant fails (the policy misses it);
- a granted action that nothing called fails (not needed, or not tested).

Calls made by child processes (``iotdr`` run as a command by other tests) are
not in the record; every action is reached in process here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from device_agent.cli import main
from replicator.aws._adapter import build_region
from replicator.aws._calls import RegionConfig
from replicator.aws._iam import PolicyRequest, code_actions
from replicator.core._state import ObjectKey
from replicator.lambda_handler import LambdaReplicator
from replicator.runtime._build import build
from replicator.runtime._engine import EngineConfig
from replicator.runtime._quotas import QuotaConfig, QuotaLimiter
from replicator.runtime._reconcile import reconcile
from replicator.runtime._settings import Settings
from simulators.controlplane import start_control_plane
from simulators.shadows import ShadowService
from tests.unit.test_deploy_cfn import region_setup_handler, stubbed_iot

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators import Broker

pytestmark = pytest.mark.integration

EAST, WEST = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"
FAST = {"default": 10_000.0}

# The widest policy of each identity whose code calls AWS: every call it may make.
WIDEST = {
    "replicator": PolicyRequest(primary_region=EAST, secondary_region=WEST, failback=True),
    "jitr": PolicyRequest(identity="jitr", primary_region=EAST, secondary_region=WEST),
    "region-setup": PolicyRequest(identity="region-setup", primary_region=EAST),
}
# Not deployed identities: the simulators and the tests' own clients, the drill and the
# operator's tools (`iotdr tools`), which run with the operator's credentials.
NOT_DEPLOYED = {"other", "drill", "operator"}


class Regions:
    """The local control plane (both regions) and a shadow service per region."""

    def __init__(self, plane_url: str, shadows: dict[str, str]) -> None:
        assert plane_url.startswith("http://127.0.0.1:")
        self.url = plane_url
        self.shadows = shadows

    def iot(self, region: str) -> Any:
        return boto3.client(
            "iot",
            region_name=region,
            endpoint_url=self.url,
            config=Config(retries={"mode": "adaptive"}),
        )

    def data(self, region: str) -> Any:
        return boto3.client("iot-data", region_name=region, endpoint_url=self.shadows[region])

    def config(self, region: str) -> RegionConfig:
        return RegionConfig(
            region=region, endpoint_url=self.url, data_endpoint_url=self.shadows[region]
        )

    def cli_args(self) -> list[str]:
        return [
            "--primary-region", EAST, "--secondary-region", WEST,
            "--primary-endpoint-url", self.url, "--secondary-endpoint-url", self.url,
            "--primary-data-endpoint-url", self.shadows[EAST],
            "--secondary-data-endpoint-url", self.shadows[WEST],
            "--quota", "default=10000",
        ]  # fmt: skip


@pytest.fixture
def regions(region_brokers: dict[str, Broker], tmp_path: Path) -> Iterator[Regions]:
    addresses = {region: (b.host, b.port) for region, b in region_brokers.items()}
    services: dict[str, ShadowService] = {}
    with start_control_plane(
        state_dir=tmp_path, brokers=addresses, quotas=FAST, thing_type_delete_after_s=0.0
    ) as plane:
        try:
            for region, broker in region_brokers.items():
                services[region] = ShadowService(
                    region, http_host=broker.host, broker=(broker.host, broker.port)
                )
                services[region].start()
            yield Regions(plane.url, {r: s.url for r, s in services.items()})
        finally:
            for service in services.values():
                service.stop()


def _certificate(name: str, issuer: tuple[Any, x509.Name] | None = None) -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer or (key, subject)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    cert = builder.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def _policy(region: str, topic: str) -> str:
    resource = f"arn:aws:iot:{region}:{ACCOUNT}:topic/{topic}"
    statement = {"Effect": "Allow", "Action": "iot:Publish", "Resource": resource}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _fleet(iot: Any, data: Any, region: str) -> dict[str, str]:
    """A small fleet of every kind the replicator copies; the certificates' ids and ARNs."""
    iot.create_thing_type(thingTypeName="sensor")
    iot.create_thing_type(thingTypeName="retired")
    iot.create_thing_group(thingGroupName="site")
    iot.create_thing_group(thingGroupName="floor", parentGroupName="site")
    iot.create_policy(policyName="fleet", policyDocument=_policy(region, "a"))
    iot.create_policy_version(
        policyName="fleet", policyDocument=_policy(region, "b"), setAsDefault=True
    )
    iot.create_policy(policyName="old", policyDocument=_policy(region, "c"))
    iot.create_thing_group(thingGroupName="gone")
    ids = {}
    for name in ("d1", "d2"):
        cert = iot.register_certificate_without_ca(
            certificatePem=_certificate(name)[0], status="ACTIVE"
        )
        iot.attach_policy(policyName="fleet", target=cert["certificateArn"])
        iot.attach_policy(policyName="old", target=cert["certificateArn"])
        iot.create_thing(
            thingName=name, thingTypeName="sensor", attributePayload={"attributes": {"a": "1"}}
        )
        iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
        iot.add_thing_to_thing_group(thingGroupName="floor", thingName=name)
        data.update_thing_shadow(thingName=name, payload=b'{"state": {"reported": {"t": 1}}}')
        data.update_thing_shadow(
            thingName=name, shadowName="config", payload=b'{"state": {"desired": {"r": 2}}}'
        )
        ids[name] = cert["certificateId"]
        ids[f"{name}-arn"] = cert["certificateArn"]
    return ids


def _settings(regions: Regions, journal: Path, direction: str = "forward") -> Settings:
    engine = EngineConfig(
        direction=direction,  # type: ignore[arg-type]
        thing_recheck_s=None,
        dependency_ttl_s=0.0,
        thing_type_delete_after_s=0.0,
    )
    return Settings(
        primary=regions.config(EAST),
        secondary=regions.config(WEST),
        engine=engine,
        quotas=QuotaConfig.with_overrides(FAST),
        journal=str(journal),
    )


def _reconcile(regions: Regions, journal: Path, direction: str = "forward") -> None:
    with build(_settings(regions, journal, direction)) as runtime:
        assert runtime.engine is not None
        report = reconcile(runtime.engine, dry_run=False)
        runtime.engine.drain()
        # A deprecated type's deletion is scheduled (AWS: 300 s later); it is due at once here.
        runtime.engine.apply(ObjectKey.thing_type("retired"))
    assert not report.errors, report.text()


def test_the_replicator_forward_back_and_as_a_lambda(regions: Regions, tmp_path: Path) -> None:
    east, west = regions.iot(EAST), regions.iot(WEST)
    east_data, west_data = regions.data(EAST), regions.data(WEST)
    ids = _fleet(east, east_data, EAST)
    journal = tmp_path / "journal.db"

    # The command line's reconcile: a first full copy.
    code = main(["replicator", "reconcile", *regions.cli_args(), "--journal", str(journal)])
    assert code == 0
    assert west.describe_thing(thingName="d1")["thingTypeName"] == "sensor"
    assert west_data.list_named_shadows_for_thing(thingName="d1")["results"] == ["config"]

    # Changes and deletions in the primary, copied by the composition root's engine.
    east.update_thing(thingName="d1", attributePayload={"attributes": {"a": "2"}})
    east.remove_thing_from_thing_group(thingGroupName="floor", thingName="d1")
    east.update_thing_group(
        thingGroupName="site", thingGroupProperties={"attributePayload": {"attributes": {"k": "v"}}}
    )
    east.deprecate_thing_type(thingTypeName="retired")
    east.delete_thing_type(thingTypeName="retired")
    for device in ("d1", "d2"):
        east.detach_policy(policyName="old", target=ids[f"{device}-arn"])
    east.delete_policy(policyName="old")
    east.set_default_policy_version(policyName="fleet", policyVersionId="1")
    east.delete_policy_version(policyName="fleet", policyVersionId="2")
    east.update_certificate(certificateId=ids["d2"], newStatus="INACTIVE")
    east.detach_policy(policyName="fleet", target=ids["d2-arn"])
    east.detach_thing_principal(thingName="d2", principal=ids["d2-arn"])
    east.delete_certificate(certificateId=ids["d2"])
    east.delete_thing(thingName="d2")
    east_data.delete_thing_shadow(thingName="d1", shadowName="config")
    east.delete_thing_group(thingGroupName="gone")
    _reconcile(regions, journal)
    assert west.list_thing_groups_for_thing(thingName="d1")["thingGroups"] == []
    document = json.loads(west.get_policy(policyName="fleet")["policyDocument"])
    assert document["Statement"][0]["Resource"].endswith(":topic/a")  # version 1's, the default
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing_type(thingTypeName="retired")
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_certificate(certificateId=ids["d2"])
    assert [p["policyName"] for p in west.list_policies()["policies"]] == ["fleet"]

    # Failback: what changed in the secondary goes back to the primary.
    west_data.update_thing_shadow(thingName="d1", payload=b'{"state": {"reported": {"t": 9}}}')
    west.create_thing(thingName="d3")
    _reconcile(regions, journal, "failback")
    assert east.describe_thing(thingName="d3")["thingName"] == "d3"

    # The Lambda handler on one SQS batch (the body the IoT rule writes).
    east.update_thing(thingName="d1", attributePayload={"attributes": {"a": "3"}})
    payload = {"eventType": "THING_EVENT", "eventId": "e1", "timestamp": 1}
    payload |= {"operation": "UPDATED", "thingName": "d1", "versionNumber": 4}
    body = json.dumps({"topic": "$aws/events/thing/d1/updated", "payload": payload})
    event = {"Records": [{"messageId": "m1", "body": body, "attributes": {}}]}
    with build(_settings(regions, tmp_path / "lambda.db")) as runtime:
        assert runtime.engine is not None
        assert LambdaReplicator(runtime.engine).handle(event) == {"batchItemFailures": []}
    assert west.describe_thing(thingName="d1")["attributes"] == {"a": "3"}


def _answer_list_ca_certificates(
    monkeypatch: pytest.MonkeyPatch, cas: list[dict[str, Any]]
) -> None:
    """ListCACertificates answered with ``cas``, as AWS would: the local control plane
    (moto) does not implement it. The call is still made, and recorded, by the handler."""
    original = botocore.session.Session.__init__

    def answer(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        del kwargs
        return AWSResponse("http://127.0.0.1/", 200, HTTPHeaders(), None), {"certificates": cas}

    def init(self: botocore.session.Session, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)  # the recorder's handler first
        self.register("before-call.iot.ListCACertificates", answer)  # type: ignore[arg-type]

    monkeypatch.setattr(botocore.session.Session, "__init__", init)


def test_the_jitr_handler_activates_after_asking_the_primary(
    regions: Regions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    east, west = regions.iot(EAST), regions.iot(WEST)
    ca_pem, ca_key = _certificate("iotdr test ca")
    ca_name = x509.load_pem_x509_certificate(ca_pem.encode()).subject
    ca = west.register_ca_certificate(
        caCertificate=ca_pem, setAsActive=True, allowAutoRegistration=True
    )
    _answer_list_ca_certificates(
        monkeypatch,
        [
            {
                "certificateId": ca["certificateId"],
                "certificateArn": ca["certificateArn"],
                "status": "ACTIVE",
            }
        ],
    )
    device_pem, _ = _certificate("device-1", issuer=(ca_key, ca_name))
    pending = west.register_certificate(
        certificatePem=device_pem, caCertificatePem=ca_pem, status="PENDING_ACTIVATION"
    )
    east.register_certificate_without_ca(certificatePem=device_pem, status="ACTIVE")
    document = tmp_path / "policy.json"
    document.write_text(_policy(WEST, "iotdr/*"))
    command = [
        "replicator", "jitr", "--once", "--region", WEST, "--endpoint-url", regions.url,
        "--primary-region", EAST, "--primary-endpoint-url", regions.url,
        "--policy", "jitr-devices", "--policy-document", str(document),
    ]  # fmt: skip
    code = main(command)
    assert code == 0
    description = west.describe_certificate(certificateId=pending["certificateId"])
    assert description["certificateDescription"]["status"] == "ACTIVE"
    assert west.list_thing_principals(thingName="device-1")["principals"]

    # A second device whose thing is there already, and the policy with two versions.
    west.create_thing(thingName="device-2")
    west.create_policy_version(
        policyName="jitr-devices", policyDocument=_policy(WEST, "iotdr/v2/*"), setAsDefault=True
    )
    second_pem, _ = _certificate("device-2", issuer=(ca_key, ca_name))
    second = west.register_certificate(
        certificatePem=second_pem, caCertificatePem=ca_pem, status="PENDING_ACTIVATION"
    )
    east.register_certificate_without_ca(certificatePem=second_pem, status="ACTIVE")
    assert main(command) == 0
    description = west.describe_certificate(certificateId=second["certificateId"])
    assert description["certificateDescription"]["status"] == "ACTIVE"


def test_the_data_endpoint_is_discovered_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_credentials(monkeypatch)
    with mock_aws():
        expected = boto3.client("iot", region_name=EAST).describe_endpoint(
            endpointType="iot:Data-ATS"
        )["endpointAddress"]
        region = build_region(RegionConfig(region=EAST), limiter=QuotaLimiter())
        data = region.data
    assert expected.endswith("-ats.iot.us-east-1.amazonaws.com")
    assert re.fullmatch(
        r"https://[a-z0-9]+-ats\.iot\.us-east-1\.amazonaws\.com", data.meta.endpoint_url
    )


def test_the_region_templates_setup_turns_on_events_and_indexing() -> None:
    """Stubbed: neither moto nor the local control plane has UpdateEventConfigurations."""
    iot, stubber = stubbed_iot()
    with stubber, region_setup_handler(iot) as (handler, responses):
        handler({"RequestType": "Create", **_custom_resource_request()}, None)
        stubber.assert_no_pending_responses()
    assert responses[-1]["Status"] == "SUCCESS", responses[-1]


def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", EAST)


def _custom_resource_request() -> dict[str, Any]:
    return {
        "StackId": f"arn:aws:cloudformation:{EAST}:{ACCOUNT}:stack/iotdr-region/1",
        "RequestId": "r1",
        "LogicalResourceId": "RegistryEventsAndIndexing",
        "ResourceProperties": {"ShadowIndexing": "true"},
    }


def audit(calls: Counter[tuple[str, str]]) -> list[str]:
    """What is wrong between the recorded calls and the widest policies, one line each."""
    called: dict[str, set[str]] = {}
    for identity, action in calls:
        called.setdefault(identity, set()).add(action)
    problems = []
    for identity, request in WIDEST.items():
        allowed, made = code_actions(request), called.get(identity, set())
        problems += [f"{identity}: calls {a}, its policy misses it" for a in sorted(made - allowed)]
        problems += [f"{identity}: grants {a}, never called" for a in sorted(allowed - made)]
    unknown = set(called) - set(WIDEST) - NOT_DEPLOYED
    if unknown:
        problems.append(f"calls by identities without a policy: {sorted(unknown)}")
    return problems


def test_the_audit_sees_a_missing_grant_an_unneeded_one_and_an_unknown_caller() -> None:
    complete: Counter[tuple[str, str]] = Counter()
    for identity, request in WIDEST.items():
        for action in code_actions(request):
            complete[identity, action] += 1
    assert audit(complete) == []
    broken = complete.copy()
    del broken["replicator", "iot:DeleteThingGroup"]
    broken["jitr", "iot:DeleteThing"] += 1
    broken["sim-tool", "iot:ListThings"] += 1
    assert audit(broken) == [
        "replicator: grants iot:DeleteThingGroup, never called",
        "jitr: calls iot:DeleteThing, its policy misses it",
        "calls by identities without a policy: ['sim-tool']",
    ]


@pytest.mark.aws_call_audit  # collected last (tests/conftest.py): every call is in the record
def test_every_policy_grants_what_the_code_calls_and_nothing_else(
    aws_calls: Counter[tuple[str, str]],
) -> None:
    problems = audit(aws_calls)
    assert not problems, "\n".join(problems)
