"""AWS's thing type deletion rule in the control plane's middleware, seen through boto3.

AWS deletes a thing type only once it has been deprecated for five minutes;
moto deletes it at once. The middleware refuses the call before moto sees it,
with AWS's error code. Here it serves a fake moto and a fake registry on
loopback, with a clock the test sets: no moto, no waiting.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from werkzeug.serving import make_server

from simulators.controlplane import (
    ApiRouter,
    ControlPlaneConfig,
    ControlPlaneError,
    ControlPlaneMiddleware,
    QuotaTable,
    RegistryView,
    Subjects,
    ThingTypeState,
    Throttle,
)
from tests.unit._door_records import NoDoorRecords

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from mypy_boto3_iot import IoTClient

REGION = "us-east-1"
DEPRECATED_AT_MS = 1_735_689_600_000
WAIT_S = 300.0


class FakeMoto:
    """Deletes a thing type from ``types`` as moto would, with no rule of its own."""

    def __init__(self, types: dict[str, ThingTypeState]) -> None:
        self.types = types
        self.calls: list[str] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        self.calls.append(f"{environ['REQUEST_METHOD']} {path}")
        name = path.rsplit("/", 1)[-1]
        if self.types.pop(name, None) is None:
            body = json.dumps({"message": "The specified resource does not exist"}).encode()
            start_response(
                "404 Not Found",
                [("Content-Type", "application/json"),
                 ("x-amzn-ErrorType", "ResourceNotFoundException")],
            )  # fmt: skip
            return [body]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


class FakeRegistry(NoDoorRecords):
    """The registry reader over the same ``types`` as :class:`FakeMoto`."""

    def __init__(self, types: dict[str, ThingTypeState]) -> None:
        self.types = types

    def snapshot(self, region: str, subjects: Subjects) -> RegistryView:
        del region
        return RegistryView(types={name: self.types.get(name) for name in subjects.types})

    def certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], []

    def ca_certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], []

    def thing_certificates(self, region: str, thing_name: str) -> frozenset[str]:
        return frozenset()

    def register_pending(
        self, region: str, certificate_pem: str, ca_certificate_id: str
    ) -> tuple[dict[str, Any], bool]:
        raise NotImplementedError


class Plane:
    """The middleware served on loopback, its fake moto, and the clock it reads."""

    def __init__(self, types: dict[str, ThingTypeState]) -> None:
        self.now_ms = DEPRECATED_AT_MS
        self.moto = FakeMoto(types)
        self.middleware = ControlPlaneMiddleware(
            self.moto,
            router=ApiRouter.from_botocore("iot"),
            throttle=Throttle(QuotaTable.with_overrides({"default": 1000})),
            registry=FakeRegistry(types),
            publishers={},
            account_id="123456789012",
            now_ms=lambda: self.now_ms,
            thing_type_delete_after_s=WAIT_S,
        )
        self.server = make_server("127.0.0.1", 0, self.middleware, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def iot(self) -> IoTClient:
        return boto3.client(
            "iot",
            region_name=REGION,
            endpoint_url=f"http://127.0.0.1:{self.server.port}",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )


def thing_type(name: str, *, deprecated_at_ms: int | None) -> ThingTypeState:
    return ThingTypeState(
        name=name,
        type_id=f"id-{name}",
        arn=f"arn:aws:iot:{REGION}:123456789012:thingtype/{name}",
        deprecated=deprecated_at_ms is not None,
        deprecation_date_ms=deprecated_at_ms,
    )


@pytest.fixture
def plane() -> Iterator[Plane]:
    types = {
        "old": thing_type("old", deprecated_at_ms=DEPRECATED_AT_MS),
        "live": thing_type("live", deprecated_at_ms=None),
    }
    served = Plane(types)
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        served.thread.join(5)


def refusal(iot: IoTClient, name: str) -> tuple[str, int, str]:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        iot.delete_thing_type(thingTypeName=name)
    response: Any = caught.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def test_a_type_deprecated_less_than_the_wait_ago_is_not_deleted(plane: Plane) -> None:
    iot = plane.iot()
    plane.now_ms = DEPRECATED_AT_MS + int(WAIT_S * 1000) - 1
    code, status, message = refusal(iot, "old")
    assert (code, status) == ("InvalidRequestException", 400)
    assert "seconds after its deprecation" in message
    assert plane.moto.calls == []  # refused before moto saw it
    assert "old" in plane.moto.types


def test_a_type_deprecated_the_wait_ago_is_deleted(plane: Plane) -> None:
    iot = plane.iot()
    plane.now_ms = DEPRECATED_AT_MS + int(WAIT_S * 1000)
    iot.delete_thing_type(thingTypeName="old")
    assert plane.moto.calls == ["DELETE /thing-types/old"]
    assert "old" not in plane.moto.types


def test_a_type_that_is_not_deprecated_is_not_deleted_whenever_asked(plane: Plane) -> None:
    iot = plane.iot()
    for later_s in (0, WAIT_S, 10 * WAIT_S):
        plane.now_ms = DEPRECATED_AT_MS + int(later_s * 1000)
        code, status, message = refusal(iot, "live")
        assert (code, status) == ("InvalidRequestException", 400)
        assert "not deprecated" in message
    assert plane.moto.calls == []


def test_a_type_that_does_not_exist_is_left_to_moto(plane: Plane) -> None:
    code, status, _ = refusal(plane.iot(), "never")
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert plane.moto.calls == ["DELETE /thing-types/never"]


def test_the_wait_is_configured_and_checked() -> None:
    config = ControlPlaneConfig(thing_type_delete_after_s=2.0)
    assert ControlPlaneConfig.from_json(config.to_json()).thing_type_delete_after_s == 2.0
    assert ControlPlaneConfig().thing_type_delete_after_s == 300.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ControlPlaneError, match="thing_type_delete_after_s"):
            ControlPlaneConfig(thing_type_delete_after_s=bad)
