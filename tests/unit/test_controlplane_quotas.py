"""Control-plane throttling: token buckets on a fake clock, the quota table, API names."""

from __future__ import annotations

import math
import re

import botocore.session
import pytest

from device_agent.testing import FakeClock
from simulators.controlplane import (
    DEFAULT_TPS,
    DEFAULT_UNLISTED_TPS,
    EVENT_APIS,
    ApiRouter,
    QuotaTable,
    Throttle,
    TokenBucket,
    region_from_authorization,
)


def _admitted(throttle: Throttle, count: int, *, region: str = "us-east-1", api: str) -> int:
    return sum(throttle.admit(region, api) for _ in range(count))


# -- the bucket -------------------------------------------------------------------------------


def test_a_bucket_starts_full_with_burst_equal_to_rate() -> None:
    bucket = TokenBucket.full(5.0, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket.full(5.0, now=0.0)
    for _ in range(5):
        assert bucket.try_take(0.0)
    assert not bucket.try_take(0.19)
    assert bucket.try_take(0.2)  # one token per 1/5 s
    assert not bucket.try_take(0.2)


def test_a_refused_call_takes_nothing() -> None:
    bucket = TokenBucket.full(10.0, now=0.0)
    for _ in range(10):
        bucket.try_take(0.0)
    for _ in range(100):
        assert not bucket.try_take(0.05)  # half a token so far, refused each time
    assert bucket.try_take(0.1)


def test_an_idle_bucket_holds_no_more_than_its_burst() -> None:
    bucket = TokenBucket.full(3.0, now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.available(3600.0) == 3.0
    assert [bucket.try_take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_a_clock_reading_from_the_past_adds_nothing() -> None:
    bucket = TokenBucket.full(1.0, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert bucket.available(10.5) == pytest.approx(0.5)


def test_a_rate_below_one_still_admits_one_call() -> None:
    bucket = TokenBucket.full(0.5, now=0.0)
    assert bucket.try_take(0.0)
    assert not bucket.try_take(1.9)
    assert bucket.try_take(2.0)


@pytest.mark.parametrize(("rate", "seconds"), [(5.0, 1.0), (100.0, 3.0), (350.0, 0.5), (0.5, 10.0)])
def test_calls_admitted_over_time_are_burst_plus_rate_times_time(
    rate: float, seconds: float
) -> None:
    clock = FakeClock(0.0)
    throttle = Throttle(QuotaTable(rates={"X": rate}), clock=clock)
    admitted = 0
    steps = 1000
    for step in range(steps + 1):
        clock.advance(seconds * step / steps - clock.monotonic())  # to exactly that time
        admitted += _admitted(throttle, 3, api="X")
    assert admitted == math.floor(max(1.0, rate) + rate * seconds + 1e-6)


# -- the throttle: a bucket per region and API ------------------------------------------------


def test_buckets_are_per_region_and_per_api() -> None:
    clock = FakeClock(1000.0)
    throttle = Throttle(QuotaTable.with_overrides({"CreateThing": 5, "default": 2}), clock=clock)
    assert _admitted(throttle, 10, api="CreateThing") == 5
    assert _admitted(throttle, 10, region="us-west-2", api="CreateThing") == 5
    assert _admitted(throttle, 10, api="ListThingGroups") == 2
    assert throttle.throttled == 5 + 5 + 8
    clock.advance(1.0)
    assert _admitted(throttle, 10, api="CreateThing") == 5


def test_default_rates_follow_the_quota_table() -> None:
    table = QuotaTable.with_overrides()
    # "checked 2025" where the table has it, else the older value.
    expected = {
        "CreateThing": 100,
        "UpdateThing": 10,
        "DescribeThing": 350,
        "DeleteThing": 15,
        "AttachThingPrincipal": 100,
        "AttachPolicy": 15,
        "RegisterCertificateWithoutCA": 10,
        "RegisterCertificate": 10,
        "DescribeCertificate": 10,
        "AddThingToThingGroup": 100,
        "CreateThingGroup": 25,
        "UpdateThingGroup": 15,
        "DescribeThingGroup": 100,
        "CreateThingType": 15,
        "DescribeThingType": 100,
        "ListThings": 10,
        "ListThingsInThingGroup": 25,
        "ListAttachedPolicies": 15,
        "SearchIndex": 15,
        "RegisterThing": 10,
    }
    assert {api: table.rate_for(api) for api in expected} == expected
    assert table.rate_for("ListThingGroups") == DEFAULT_UNLISTED_TPS


def test_overrides_change_only_what_they_name() -> None:
    table = QuotaTable.with_overrides({"CreateThing": 5, "default": 50})
    assert table.rate_for("CreateThing") == 5
    assert table.rate_for("DescribeThing") == DEFAULT_TPS["DescribeThing"]
    assert table.rate_for("ListThingGroups") == 50
    assert table.as_dict()["default"] == 50


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, "10", True, None])
def test_a_rate_must_be_a_positive_finite_number(rate: object) -> None:
    with pytest.raises(ValueError, match="CreateThing"):
        QuotaTable.with_overrides({"CreateThing": rate})  # type: ignore[dict-item]


def test_every_default_quota_names_a_real_api() -> None:
    operations = set(botocore.session.get_session().get_service_model("iot").operation_names)
    assert set(DEFAULT_TPS) <= operations
    assert operations >= EVENT_APIS


# -- API names from method and path -----------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> ApiRouter:
    return ApiRouter.from_botocore("iot")


@pytest.mark.parametrize(
    ("method", "path", "api", "params"),
    [
        ("POST", "/things/t1", "CreateThing", {"thingName": "t1"}),
        ("PATCH", "/things/t1", "UpdateThing", {"thingName": "t1"}),
        ("GET", "/things/t1", "DescribeThing", {"thingName": "t1"}),
        ("DELETE", "/things/t1", "DeleteThing", {"thingName": "t1"}),
        ("GET", "/things", "ListThings", {}),
        ("POST", "/things", "RegisterThing", {}),
        ("PUT", "/things/t1/principals", "AttachThingPrincipal", {"thingName": "t1"}),
        ("GET", "/things/t1/principals", "ListThingPrincipals", {"thingName": "t1"}),
        ("GET", "/principals/things", "ListPrincipalThings", {}),
        ("PUT", "/target-policies/p1", "AttachPolicy", {"policyName": "p1"}),
        (
            "POST",
            "/attached-policies/arn:aws:iot:x",
            "ListAttachedPolicies",
            {"target": "arn:aws:iot:x"},
        ),
        ("POST", "/certificate/register-no-ca", "RegisterCertificateWithoutCA", {}),
        ("POST", "/certificate/register", "RegisterCertificate", {}),
        ("POST", "/certificates", "CreateCertificateFromCsr", {}),
        ("GET", "/certificates/ab12", "DescribeCertificate", {"certificateId": "ab12"}),
        ("PUT", "/certificates/ab12", "UpdateCertificate", {"certificateId": "ab12"}),
        ("POST", "/policies/p1", "CreatePolicy", {"policyName": "p1"}),
        ("POST", "/policies/p1/version", "CreatePolicyVersion", {"policyName": "p1"}),
        ("GET", "/policies/p1", "GetPolicy", {"policyName": "p1"}),
        ("PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup", {}),
        ("PUT", "/thing-groups/removeThingFromThingGroup", "RemoveThingFromThingGroup", {}),
        ("PUT", "/thing-groups/updateThingGroupsForThing", "UpdateThingGroupsForThing", {}),
        ("POST", "/thing-groups/g1", "CreateThingGroup", {"thingGroupName": "g1"}),
        ("PATCH", "/thing-groups/g1", "UpdateThingGroup", {"thingGroupName": "g1"}),
        ("GET", "/thing-groups/g1", "DescribeThingGroup", {"thingGroupName": "g1"}),
        ("DELETE", "/thing-groups/g1", "DeleteThingGroup", {"thingGroupName": "g1"}),
        ("GET", "/thing-groups/g1/things", "ListThingsInThingGroup", {"thingGroupName": "g1"}),
        ("POST", "/thing-types/s", "CreateThingType", {"thingTypeName": "s"}),
        ("GET", "/thing-types/s", "DescribeThingType", {"thingTypeName": "s"}),
        ("POST", "/thing-types/s/deprecate", "DeprecateThingType", {"thingTypeName": "s"}),
        ("DELETE", "/thing-types/s", "DeleteThingType", {"thingTypeName": "s"}),
        ("POST", "/indices/search", "SearchIndex", {}),
        (
            "GET",
            "/destinations/arn:aws:iot:r:1:d/a/b",
            "GetTopicRuleDestination",
            {"arn": "arn:aws:iot:r:1:d/a/b"},
        ),
    ],
)
def test_method_and_path_name_the_api(
    router: ApiRouter, method: str, path: str, api: str, params: dict[str, str]
) -> None:
    assert router.match(method, path) == (api, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_iotdr/status"),
        ("POST", "/nothing-here"),
        ("GET", "/things/a/b/c/d"),
        ("TRACE", "/things"),
    ],
)
def test_a_path_no_api_has_is_no_api(router: ApiRouter, method: str, path: str) -> None:
    assert router.match(method, path) is None


def test_every_operation_of_the_model_maps_back_to_itself(router: ApiRouter) -> None:
    model = botocore.session.get_session().get_service_model("iot")
    wrong = []
    for name in model.operation_names:
        spec = model.operation_model(name).http
        path = re.sub(r"\{[^}]+\}", "x1", spec["requestUri"].split("?")[0])
        found = router.match(spec["method"], path)
        if found is None or found[0] != name:
            wrong.append((name, spec["method"], spec["requestUri"], found))
    assert wrong == []


def test_literal_segments_win_over_placeholders() -> None:
    router = ApiRouter([("ByName", "PUT", "/groups/{name}"), ("Special", "PUT", "/groups/special")])
    assert router.match("PUT", "/groups/special") == ("Special", {})
    assert router.match("PUT", "/groups/other") == ("ByName", {"name": "other"})
    assert router.match("PUT", "/groups/other/") == ("ByName", {"name": "other"})


@pytest.mark.parametrize(
    ("header", "region"),
    [
        (
            (
                "AWS4-HMAC-SHA256 Credential=testing/20250101/us-west-2/iot/aws4_request, "
                "SignedHeaders=host;x-amz-date, Signature=abc"
            ),
            "us-west-2",
        ),
        ("AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-central-1/iot/aws4_request", "eu-central-1"),
        ("Bearer token", None),
        ("", None),
        (None, None),
    ],
)
def test_the_region_comes_from_the_credential_scope(header: str | None, region: str | None) -> None:
    assert region_from_authorization(header) == region
