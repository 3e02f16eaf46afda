"""The boto3 adapter against moto, in process: the acceptance rows end to end; its errors."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import random
import re
import socket
import threading
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from device_agent.cli import main
from device_agent.testing import FakeClock
from replicator._errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    CredentialsError,
    InvalidRequestError,
    NotFoundError,
    RefusedError,
    RegionUnavailableError,
    ThrottledError,
)
from replicator.aws._adapter import Boto3Region, RegionConfig, build_region, translate_client_error
from replicator.core._records import ObjectNamed
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaConfig, QuotaLimiter, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Iterator

EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


def certificate_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Moto:
    """Both regions under mock_aws: raw clients for "the user", adapters for the engine."""

    def __init__(self, mode: str = "complete") -> None:
        limiter = QuotaLimiter(QuotaConfig.with_overrides({"default": 10_000}))
        regions = []
        for region in (EAST, WEST):
            config = RegionConfig(
                region=region, data_endpoint_url=f"https://data-ats.iot.{region}.amazonaws.com"
            )
            regions.append(build_region(config, limiter=limiter))
        self.primary, self.secondary = regions
        self.east = boto3.client("iot", region_name=EAST)
        self.west = boto3.client("iot", region_name=WEST)
        self.east_data = boto3.client("iot-data", region_name=EAST)
        self.west_data = boto3.client("iot-data", region_name=WEST)
        self.journal = Journal(":memory:")
        self.engine = Engine(
            source=self.primary,
            target=self.secondary,
            journal=self.journal,
            config=EngineConfig(mode=mode, thing_recheck_s=None, dependency_ttl_s=0.0),  # type: ignore[arg-type]
        )

    def sync(self, *keys: ObjectKey) -> None:
        for key in keys:
            self.journal.accept(ObjectNamed(region=EAST, key=key), now=self.engine.now())
        self.engine.drain()
        assert self.journal.counts(self.engine.now()).dead == 0, list(self.journal.rows("dead"))


@pytest.fixture
def moto() -> Iterator[Moto]:
    with mock_aws():
        yield Moto()


T1 = ObjectKey.thing("t1")


def policy_document(region: str, topic: str) -> str:
    resource = f"arn:aws:iot:{region}:123456789012:topic/{topic}"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": resource}],
        }
    )


def test_complete_mode_copies_thing_certificate_policy_type_and_groups(moto: Moto) -> None:
    east = moto.east
    east.create_thing_type(
        thingTypeName="sensor", thingTypeProperties={"thingTypeDescription": "d"}
    )
    east.create_thing_group(thingGroupName="root")
    east.create_thing_group(thingGroupName="child", parentGroupName="root")
    east.create_policy(policyName="fleet", policyDocument=policy_document(EAST, "a"))
    cert = east.register_certificate_without_ca(
        certificatePem=certificate_pem("d1"), status="INACTIVE"
    )
    east.attach_policy(policyName="fleet", target=cert["certificateArn"])
    east.create_thing(
        thingName="t1", thingTypeName="sensor", attributePayload={"attributes": {"a": "1"}}
    )
    east.attach_thing_principal(thingName="t1", principal=cert["certificateArn"])
    east.add_thing_to_thing_group(thingGroupName="child", thingName="t1")

    moto.sync(T1)

    west = moto.west
    thing = west.describe_thing(thingName="t1")
    assert (thing["thingTypeName"], thing["attributes"]) == ("sensor", {"a": "1"})
    copied = west.describe_certificate(certificateId=cert["certificateId"])[
        "certificateDescription"
    ]
    assert copied["status"] == "INACTIVE"  # never defaulted to ACTIVE
    assert west.list_thing_principals(thingName="t1")["principals"] == [copied["certificateArn"]]
    assert [
        p["policyName"]
        for p in west.list_attached_policies(target=copied["certificateArn"])["policies"]
    ] == ["fleet"]
    document = json.loads(west.get_policy(policyName="fleet")["policyDocument"])
    assert document["Statement"][0]["Resource"] == f"arn:aws:iot:{WEST}:123456789012:topic/a"
    groups = west.list_thing_groups_for_thing(thingName="t1")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["child"]
    assert (
        west.describe_thing_group(thingGroupName="child")["thingGroupMetadata"]["parentGroupName"]
        == "root"
    )

    # A second pass finds nothing to do: equal objects are never rewritten.
    writes = dict(moto.engine.stats.writes)
    moto.sync(T1)
    assert moto.engine.stats.writes == writes


def test_thing_update_attribute_removal_type_removal_and_delete(moto: Moto) -> None:
    east, west = moto.east, moto.west
    east.create_thing_type(thingTypeName="sensor")
    east.create_thing(
        thingName="t1",
        thingTypeName="sensor",
        attributePayload={"attributes": {"a": "1", "b": "2"}},
    )
    moto.sync(T1)
    east.update_thing(
        thingName="t1", attributePayload={"attributes": {"a": "9", "c": "3"}, "merge": True}
    )
    moto.sync(T1)
    assert west.describe_thing(thingName="t1")["attributes"] == {"a": "9", "b": "2", "c": "3"}
    east.update_thing(
        thingName="t1", attributePayload={"attributes": {"c": "3"}}, removeThingType=True
    )
    moto.sync(T1)
    described = west.describe_thing(thingName="t1")
    assert described["attributes"] == {"c": "3"}
    assert described.get("thingTypeName") is None
    east.delete_thing(thingName="t1")
    moto.sync(T1)
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing(thingName="t1")


def test_certificate_revocation_and_rotation(moto: Moto) -> None:
    east, west = moto.east, moto.west
    old = east.register_certificate_without_ca(
        certificatePem=certificate_pem("old"), status="ACTIVE"
    )
    east.create_thing(thingName="t1")
    east.attach_thing_principal(thingName="t1", principal=old["certificateArn"])
    moto.sync(T1)
    new = east.register_certificate_without_ca(
        certificatePem=certificate_pem("new"), status="ACTIVE"
    )
    east.attach_thing_principal(thingName="t1", principal=new["certificateArn"])
    east.detach_thing_principal(thingName="t1", principal=old["certificateArn"])
    east.update_certificate(certificateId=old["certificateId"], newStatus="REVOKED")
    moto.sync(T1)
    principals = west.list_thing_principals(thingName="t1")["principals"]
    assert [p.rsplit("/", 1)[1] for p in principals] == [new["certificateId"]]
    status = west.describe_certificate(certificateId=old["certificateId"])[
        "certificateDescription"
    ]["status"]
    assert status == "REVOKED"  # the detached certificate was followed up


def test_policy_versions_and_default(moto: Moto) -> None:
    east, west = moto.east, moto.west
    east.create_policy(policyName="p", policyDocument=policy_document(EAST, "v1"))
    moto.sync(ObjectKey.policy("p"))
    east.create_policy_version(
        policyName="p", policyDocument=policy_document(EAST, "v2"), setAsDefault=True
    )
    moto.sync(ObjectKey.policy("p"))
    default = json.loads(west.get_policy(policyName="p")["policyDocument"])
    assert default["Statement"][0]["Resource"].endswith(f"{WEST}:123456789012:topic/v2")
    east.set_default_policy_version(policyName="p", policyVersionId="1")
    moto.sync(ObjectKey.policy("p"))
    default = json.loads(west.get_policy(policyName="p")["policyDocument"])
    assert default["Statement"][0]["Resource"].endswith("topic/v1")
    assert len(west.list_policy_versions(policyName="p")["policyVersions"]) == 2


def test_thing_type_deprecation_and_group_update(moto: Moto) -> None:
    east, west = moto.east, moto.west
    east.create_thing_type(thingTypeName="sensor")
    moto.sync(ObjectKey.thing_type("sensor"))
    east.deprecate_thing_type(thingTypeName="sensor")
    moto.sync(ObjectKey.thing_type("sensor"))
    assert west.describe_thing_type(thingTypeName="sensor")["thingTypeMetadata"]["deprecated"]
    east.deprecate_thing_type(thingTypeName="sensor", undoDeprecate=True)
    moto.sync(ObjectKey.thing_type("sensor"))
    assert not west.describe_thing_type(thingTypeName="sensor")["thingTypeMetadata"]["deprecated"]

    east.create_thing_group(
        thingGroupName="g", thingGroupProperties={"attributePayload": {"attributes": {"a": "1"}}}
    )
    moto.sync(ObjectKey.thing_group("g"))
    east.update_thing_group(
        thingGroupName="g",
        thingGroupProperties={
            "thingGroupDescription": "new",
            "attributePayload": {"attributes": {"b": "2"}},
        },
    )
    moto.sync(ObjectKey.thing_group("g"))
    properties = west.describe_thing_group(thingGroupName="g")["thingGroupProperties"]
    assert properties["thingGroupDescription"] == "new"
    east.delete_thing_group(thingGroupName="g")
    moto.sync(ObjectKey.thing_group("g"))
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing_group(thingGroupName="g")


def test_classic_and_named_shadows_update_and_delete(moto: Moto) -> None:
    moto.east.create_thing(thingName="t1")
    moto.west.create_thing(thingName="t1")
    data = moto.east_data
    data.update_thing_shadow(
        thingName="t1", payload=json.dumps({"state": {"reported": {"t": 1}}}).encode()
    )
    data.update_thing_shadow(
        thingName="t1",
        shadowName="cfg",
        payload=json.dumps({"state": {"desired": {"r": 2}}}).encode(),
    )
    classic, named = ObjectKey.for_shadow("t1"), ObjectKey.for_shadow("t1", "cfg")
    moto.sync(classic, named)

    def west_state(name: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"thingName": "t1"} | ({"shadowName": name} if name else {})
        return dict(
            json.loads(moto.west_data.get_thing_shadow(**kwargs)["payload"].read())["state"]
        )

    assert west_state() == {"reported": {"t": 1}}
    assert west_state("cfg")["desired"] == {"r": 2}
    data.update_thing_shadow(
        thingName="t1", payload=json.dumps({"state": {"reported": {"t": None, "u": 5}}}).encode()
    )
    moto.sync(classic)
    assert west_state() == {"reported": {"u": 5}}
    data.delete_thing_shadow(thingName="t1", shadowName="cfg")
    moto.sync(named)
    with pytest.raises(moto.west_data.exceptions.ResourceNotFoundException):
        moto.west_data.get_thing_shadow(thingName="t1", shadowName="cfg")


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "Op")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 400, ThrottledError),
        ("TooManyRequestsException", 429, ThrottledError),
        ("AccessDeniedException", 403, AccessDeniedError),
        ("UnauthorizedException", 401, AccessDeniedError),
        ("ResourceNotFoundException", 404, NotFoundError),
        ("ResourceNotFoundException", 400, NotFoundError),
        # only ResourceNotFoundException means "gone": any other 404 (a wrong endpoint
        # URL, a proxy's page) would otherwise plan deletions in the target
        ("", 404, RegionUnavailableError),
        ("404", 404, RegionUnavailableError),
        ("UnknownOperationException", 404, RegionUnavailableError),
        ("NotFound", 404, RegionUnavailableError),
        ("ServiceUnavailableException", 503, RegionUnavailableError),
        ("InternalFailureException", 500, RegionUnavailableError),
        ("VersionConflictException", 409, ConflictError),
        ("ResourceAlreadyExistsException", 409, ConflictError),
        ("CertificateValidationException", 400, InvalidRequestError),
        ("MalformedPolicyException", 400, InvalidRequestError),
        ("InvalidRequestException", 400, RefusedError),
    ],
)
def test_botocore_errors_are_translated_at_the_boundary(
    code: str, status: int, expected: type[Exception]
) -> None:
    error = translate_client_error(client_error(code, status), region=WEST, api="CreateThing")
    assert type(error) is expected
    assert error.region == WEST


def test_access_denied_names_the_missing_permission_in_one_line() -> None:
    error = translate_client_error(
        client_error("AccessDeniedException", 403), region=WEST, api="RegisterCertificateWithoutCA"
    )
    assert isinstance(error, AccessDeniedError)
    assert "iot:RegisterCertificateWithoutCA" in str(error)
    assert "\n" not in str(error)
    refused = translate_client_error(
        client_error("InvalidSignatureException", 403), region=WEST, api="DescribeThing"
    )
    assert isinstance(refused, AccessDeniedError)
    assert str(refused).startswith(f"credentials refused by {WEST} (calling DescribeThing)")


def test_throttling_slows_the_bucket_and_is_retried() -> None:
    clock = FakeClock()
    limiter = QuotaLimiter(QuotaConfig(utilization=1.0), clock=clock)
    answers: list[Any] = [
        client_error("ThrottlingException"),
        client_error("ThrottlingException"),
        {"thingName": "t1"},
    ]

    class Iot:
        def describe_thing(self, **kwargs: Any) -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        def list_thing_groups_for_thing(self, **kwargs: Any) -> Any:
            return {"thingGroups": []}

    region = Boto3Region(
        RegionConfig(region=WEST),
        iot=Iot(),
        data_client=lambda url: None,
        limiter=limiter,
        retry=RetryPolicy(max_attempts=5, base_s=0.1, cap_s=1.0),
        rng=random.Random(1),
        clock=clock,
    )
    found = region.read_thing("t1", principals=False)
    assert found is not None
    assert found.name == "t1"
    assert limiter.rate(WEST, "DescribeThing") == pytest.approx(350 / 4)
    assert region.calls["DescribeThing"] == 3


def test_an_unreachable_region_is_region_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = QuotaLimiter()
    region = build_region(
        RegionConfig(
            region=WEST,
            endpoint_url=f"http://127.0.0.1:{port}",
            connect_timeout_s=1,
            read_timeout_s=1,
        ),
        limiter=limiter,
        retry=RetryPolicy(max_attempts=2, base_s=0.01, cap_s=0.01),
    )
    with pytest.raises(RegionUnavailableError, match="unreachable"):
        region.read_thing("t1", principals=False)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_no_credentials_is_one_line_naming_the_region_and_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_credentials(monkeypatch)
    region = build_region(
        RegionConfig(region=EAST, endpoint_url=f"http://127.0.0.1:{_unused_port()}"),
        limiter=QuotaLimiter(),
        retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.01),
    )
    with pytest.raises(CredentialsError) as caught:
        region.read_thing("t1", principals=False)
    error = caught.value
    assert str(error) == (
        f"no AWS credentials for {EAST}: set AWS_PROFILE or "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance role is available"
    )
    assert isinstance(error, ConfigError)
    assert error.exit_code == 2
    assert (error.region, error.api) == (EAST, "DescribeThing")
    assert region.calls == {"DescribeThing": 1}  # not retried: it cannot pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            botocore.exceptions.PartialCredentialsError(provider="env", cred_var="secret"),
            "incomplete AWS credentials for us-west-2",
        ),
        (
            botocore.exceptions.UnauthorizedSSOTokenError(),
            "log in again (aws sso login / aws login)",
        ),
        (
            botocore.exceptions.CredentialRetrievalError(provider="process", error_msg="exit 1"),
            "the AWS credentials for us-west-2 cannot be loaded",
        ),
        (botocore.exceptions.ProfileNotFound(profile="nope"), "fix the profile"),
    ],
)
def test_credentials_that_cannot_be_loaded_are_credentials_errors(
    exc: Exception, expected: str
) -> None:
    class Iot:
        def describe_thing(self, **kwargs: Any) -> Any:
            raise exc

    region = Boto3Region(
        RegionConfig(region=WEST),
        iot=Iot(),
        data_client=lambda url: None,
        limiter=QuotaLimiter(),
        retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.01),
        rng=random.Random(1),
        clock=FakeClock(),
    )
    with pytest.raises(CredentialsError, match=re.escape(expected)) as caught:
        region.read_thing("t1", principals=False)
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is exc
    assert region.calls == {"DescribeThing": 1}


@pytest.mark.parametrize(
    "args",
    [
        [
            "replicator",
            "reconcile",
            "--primary-region",
            EAST,
            "--secondary-region",
            WEST,
            "--primary-endpoint-url",
            "http://127.0.0.1:{port}",
            "--secondary-endpoint-url",
            "http://127.0.0.1:{port}",
            "--dry-run",
        ],
        [
            "replicator",
            "jitr",
            "--region",
            "us-west-2",
            "--endpoint-url",
            "http://127.0.0.1:{port}",
            "--policy",
            "p",
            "--once",
        ],
    ],
    ids=["reconcile", "jitr"],
)
def test_the_commands_say_no_credentials_in_one_line_and_exit_2(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_credentials(monkeypatch)
    port = _unused_port()
    code = main([arg.format(port=port) for arg in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("iotdr: error: no AWS credentials for ")
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_thing_type_deletion_deprecates_then_deletes_on_schedule(moto: Moto) -> None:
    east, west = moto.east, moto.west
    east.create_thing_type(thingTypeName="old")
    moto.sync(ObjectKey.thing_type("old"))
    east.deprecate_thing_type(thingTypeName="old")
    east.delete_thing_type(thingTypeName="old")
    key = ObjectKey.thing_type("old")
    moto.journal.accept(ObjectNamed(region=EAST, key=key), now=moto.engine.now())
    moto.engine.drain()
    assert west.describe_thing_type(thingTypeName="old")["thingTypeMetadata"]["deprecated"]
    state = moto.journal.state_of(key)
    assert state is not None
    assert state[0] == "pending"  # scheduled: never slept for
    assert state[2] is not None
    # moto keeps no deprecation date, so the next pass may delete at once
    moto.engine.apply(key)
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing_type(thingTypeName="old")


class NotFoundEverywhere:
    """A loopback HTTP server that answers every request 404, as a wrong endpoint URL would."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b"<html>Not Found</html>"
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                del args

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_404_that_is_not_resource_not_found_never_deletes_in_the_target(moto: Moto) -> None:
    """A wrong primary endpoint answers 404 to everything: the target's thing stays."""
    moto.west.create_thing(thingName="t1")
    wrong = NotFoundEverywhere()
    try:
        primary = build_region(
            RegionConfig(region=EAST, endpoint_url=wrong.url),
            limiter=QuotaLimiter(QuotaConfig.with_overrides({"default": 10_000})),
            retry=RetryPolicy(max_attempts=1),
        )
        with pytest.raises(RegionUnavailableError, match="404"):
            primary.read_thing("t1", principals=True)
        engine = Engine(
            source=primary,
            target=moto.secondary,
            journal=moto.journal,
            config=EngineConfig(thing_recheck_s=None, max_attempts=1),
        )
        moto.journal.accept(ObjectNamed(region=EAST, key=T1), now=engine.now())
        engine.drain()
    finally:
        wrong.close()
    assert moto.west.describe_thing(thingName="t1")["thingName"] == "t1"
    assert moto.journal.counts(engine.now()).pending == 1  # retried later, as for a region down
