"""The control plane's bulk registration: request validation, chunking, and the admin endpoint.

The endpoint is served by the real middleware on loopback, in front of a fake
moto and a fake registrar that records the batches it gets: what is tested is
what the middleware accepts, refuses (HTTP 400 with a message naming the
field, the server still serving) and journals; the write into moto's
backend is covered by ``tests/integration/test_fleet_provision.py``.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.serving import make_server

from simulators._pki import FleetPKI
from simulators.controlplane import (
    BULK_CHUNK,
    MAX_BULK_DEVICES,
    ApiRouter,
    BulkDevice,
    BulkPolicy,
    BulkRegistration,
    BulkRequestError,
    BulkResult,
    ControlPlaneAdmin,
    ControlPlaneError,
    ControlPlaneMiddleware,
    QuotaTable,
    RegistryView,
    Subjects,
    Throttle,
    parse_bulk_request,
)
from simulators.controlplane._bulk import bulk_chunks
from tests.unit._door_records import NoDoorRecords

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

REGION = "us-east-1"
POLICY_DOCUMENT = '{"Version": "2012-10-17", "Statement": []}'


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    pki = FleetPKI.create(tmp_path_factory.mktemp("pki"))
    return pki.issue_device("sim-00001").cert_path.read_text()


def body(devices: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"devices": devices, **extra}).encode()


# -- validation ----------------------------------------------------------------------------------


def test_a_valid_request_parses_to_what_the_client_sent(pem: str) -> None:
    sent = BulkRegistration(
        devices=(
            BulkDevice(thing_name="sim-00001", certificate_pem=pem),
            BulkDevice(
                thing_name="sim-00002",
                certificate_pem=pem,
                thing_type_name="sensor",
                attributes={"site": "a1"},
            ),
        ),
        policy=BulkPolicy(name="fleet", document=POLICY_DOCUMENT),
    )
    assert parse_bulk_request(json.dumps(sent.to_json()).encode()) == sent


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "the request body is not JSON"),
        (b"", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"devices": []}', "devices must be a non-empty list"),
        (b'{"devices": [{}], "extra": 1}', "unknown field(s) extra"),
        (b'{"devices": ["sim-1"]}', "devices[0] must be an object"),
    ],
)
def test_a_malformed_body_is_refused_with_a_message(raw: bytes, message: str) -> None:
    with pytest.raises(BulkRequestError) as caught:
        parse_bulk_request(raw)
    assert message in str(caught.value)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"thingName": "a b", "certificatePem": "PEM"}, "devices[1].thingName 'a b' must match"),
        ({"thingName": "x" * 129, "certificatePem": "PEM"}, "devices[1].thingName"),
        ({"thingName": "sim-2"}, "devices[1].certificatePem must be a PEM string"),
        ({"thingName": "sim-2", "certificatePem": "hello"}, "is not a PEM certificate"),
        (
            {
                "thingName": "sim-2",
                "certificatePem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            },
            "devices[1].certificatePem is not a valid PEM X.509 certificate",
        ),
        (
            {"thingName": "sim-2", "certificatePem": "PEM", "thingTypeName": "no spaces"},
            "devices[1].thingTypeName",
        ),
        (
            {"thingName": "sim-2", "certificatePem": "PEM", "attributes": {"k": 1}},
            "devices[1].attributes.k",
        ),
        ({"thingName": "sim-2", "certificatePem": "PEM", "colour": "red"}, "unknown field(s)"),
    ],
)
def test_a_bad_device_is_refused_naming_it(pem: str, device: dict[str, Any], message: str) -> None:
    sent: dict[str, Any] = {k: (pem if v == "PEM" else v) for k, v in device.items()}
    good = {"thingName": "sim-1", "certificatePem": pem}
    with pytest.raises(BulkRequestError) as caught:
        parse_bulk_request(body([good, sent]))
    assert message in str(caught.value)


def test_a_thing_asked_for_twice_differently_is_refused(pem: str) -> None:
    devices: list[dict[str, Any]] = [
        {"thingName": "sim-1", "certificatePem": pem},
        {"thingName": "sim-1", "certificatePem": pem, "attributes": {"k": "v"}},
    ]
    with pytest.raises(BulkRequestError, match="appears twice"):
        parse_bulk_request(body(devices))


def test_too_many_devices_in_one_request_are_refused(pem: str) -> None:
    devices = [
        {"thingName": f"sim-{i}", "certificatePem": pem} for i in range(MAX_BULK_DEVICES + 1)
    ]
    with pytest.raises(BulkRequestError, match=f"send at most {MAX_BULK_DEVICES}"):
        parse_bulk_request(body(devices))


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("fleet", "policy must be an object"),
        ({"policyName": "fleet"}, "give policyName and policyDocument"),
        ({"policyName": "a b", "policyDocument": "{}"}, "policy.policyName"),
        ({"policyName": "fleet", "policyDocument": "{"}, "policy.policyDocument is not JSON"),
    ],
)
def test_a_bad_policy_is_refused(pem: str, policy: object, message: str) -> None:
    with pytest.raises(BulkRequestError) as caught:
        parse_bulk_request(body([{"thingName": "sim-1", "certificatePem": pem}], policy=policy))
    assert message in str(caught.value)


# -- chunking ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [(0, 500, []), (1, 500, [1]), (500, 500, [500]), (1001, 500, [500, 500, 1]), (7, 3, [3, 3, 1])],
)
def test_devices_are_sent_in_chunks_in_order(count: int, size: int, sizes: list[int]) -> None:
    devices = [BulkDevice(thing_name=f"sim-{i}", certificate_pem="") for i in range(count)]
    chunks = bulk_chunks(devices, size)
    assert [len(c) for c in chunks] == sizes
    assert [d for chunk in chunks for d in chunk] == devices


@pytest.mark.parametrize("size", [0, -1, MAX_BULK_DEVICES + 1])
def test_a_chunk_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        bulk_chunks([], size)


# -- the endpoint --------------------------------------------------------------------------------


def no_moto(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("500 Internal Server Error", [("Content-Type", "application/json")])
    return [b'{"message": "no AWS call in these tests"}']


class FakeRegistry(NoDoorRecords):
    """The registry reader: nothing registered (the feed is what these tests read)."""

    def snapshot(self, region: str, subjects: Subjects) -> RegistryView:
        return RegistryView()

    def certificates(
        self, region: str, ids: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], list(ids or ())

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


class FakeRegistrar:
    """Records each batch; its certificate ids are the thing names."""

    def __init__(self) -> None:
        self.batches: list[BulkRegistration] = []

    def register_bulk(
        self, region: str, registration: BulkRegistration
    ) -> tuple[BulkResult, list[str]]:
        self.batches.append(registration)
        count = len(registration.devices)
        result = BulkResult(
            region=region, devices=count, certificates_created=count, things_created=count
        )
        return result, [d.thing_name for d in registration.devices]

    def backend(self, region: str) -> Any:
        raise AssertionError("registration tasks are not under test here")

    def read_object(self, bucket: str, key: str) -> bytes:
        raise KeyError(key)


class Plane:
    def __init__(self) -> None:
        self.registrar = FakeRegistrar()
        self.throttle = Throttle(QuotaTable.with_overrides({"CreateThing": 20, "default": 20}))
        self.middleware = ControlPlaneMiddleware(
            no_moto,
            router=ApiRouter.from_botocore("iot"),
            throttle=self.throttle,
            registry=FakeRegistry(),
            publishers={},
            account_id="123456789012",
            bulk=self.registrar,
        )
        self.server = make_server("127.0.0.1", 0, self.middleware, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def post(self, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def plane() -> Iterator[Plane]:
    served = Plane()
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        served.thread.join(5)


BULK = f"/_iotdr/regions/{REGION}/bulk-registration"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{devices", "the request body is not JSON"),
        (b'{"devices": [{"thingName": "a/b", "certificatePem": ""}]}', "devices[0].thingName"),
        (
            body([{"thingName": "sim-1", "certificatePem": "-----BEGIN CERTIFICATE-----"}]),
            "devices[0].certificatePem is not a valid PEM X.509 certificate",
        ),
    ],
)
def test_the_endpoint_answers_bad_input_with_400_and_keeps_serving(
    plane: Plane, data: bytes, message: str
) -> None:
    status, answer = plane.post(BULK, data)
    assert status == 400
    assert message in answer["message"]
    assert plane.registrar.batches == []
    assert plane.middleware.feed.revision(REGION) == 0
    assert ControlPlaneAdmin(plane.url).status()["requests"] == 0  # still serving


def test_the_endpoint_refuses_other_methods_and_bad_regions(plane: Plane) -> None:
    request = urllib.request.Request(plane.url + BULK, method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 405
    status, answer = plane.post("/_iotdr/regions/Mars/bulk-registration", b"{}")
    assert (status, answer["message"]) == (400, "'Mars' is not a region name")


def test_a_batch_is_registered_and_journaled_as_one_revision(plane: Plane, pem: str) -> None:
    status, answer = plane.post(BULK, body([{"thingName": f"sim-{i}", "certificatePem": pem}
                                            for i in range(3)]))  # fmt: skip
    assert status == 200
    assert answer["devices"] == 3
    assert answer["revision"] == 1
    changes = plane.middleware.feed.changes_since(REGION, 0, plane.middleware.feed.epoch)
    assert changes is not None
    assert changes.certificates == {"sim-0", "sim-1", "sim-2"}
    assert plane.middleware.status()["requests"] == 0  # no AWS call, nothing throttled


def test_the_admin_client_sends_chunks_and_sums_their_results(plane: Plane, pem: str) -> None:
    devices = [BulkDevice(thing_name=f"sim-{i:05d}", certificate_pem=pem) for i in range(1201)]
    policy = BulkPolicy(name="fleet", document=POLICY_DOCUMENT)
    result = ControlPlaneAdmin(plane.url).bulk_register(REGION, devices, policy=policy)
    assert [len(b.devices) for b in plane.registrar.batches] == [BULK_CHUNK, BULK_CHUNK, 201]
    assert all(b.policy == policy for b in plane.registrar.batches)
    assert [d for b in plane.registrar.batches for d in b.devices] == devices
    assert (result.devices, result.certificates_created, result.revision) == (1201, 1201, 3)


def test_the_admin_client_names_the_refused_device(plane: Plane, pem: str) -> None:
    devices = [
        BulkDevice(thing_name="sim-1", certificate_pem=pem),
        BulkDevice(thing_name="sim-2", certificate_pem="garbage"),
    ]
    with pytest.raises(ControlPlaneError, match=r"devices\[1\]\.certificatePem"):
        ControlPlaneAdmin(plane.url).bulk_register(REGION, devices)


def test_a_region_gets_quotas_of_its_own_and_back(plane: Plane) -> None:
    admin = ControlPlaneAdmin(plane.url)
    assert admin.set_quotas("us-west-2", {"CreateThing": 2})["CreateThing"] == 2.0
    assert plane.throttle.table_for("us-west-2").rate_for("CreateThing") == 2.0
    assert plane.throttle.table_for(REGION).rate_for("CreateThing") == 20.0
    assert plane.throttle.table_for("us-west-2").rate_for("UnlistedApi") == 20.0  # common
    admin.set_quotas("us-west-2", {})
    assert plane.throttle.table_for("us-west-2").rate_for("CreateThing") == 20.0
    with pytest.raises(ControlPlaneError, match="positive"):
        admin.set_quotas("us-west-2", {"CreateThing": -1})
