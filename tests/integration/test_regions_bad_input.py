"""Bad input to the local regions: each refused the way AWS refuses it, nothing else disturbed.

Issue 4's list: malformed shadow JSON, a shadow over 8 KB, invalid thing and
shadow names (over MQTT the ``.../rejected`` topic with ``code`` and
``message``; over HTTP the status and botocore's error code), a request for a
region that does not exist, and a call to an API that does not exist. After
each, both regions still answer a normal call. The control plane's middleware
refuses, before moto sees them: a region that is not served (403
InvalidSignatureException), a path that is no IoT API (404
UnknownOperationException), names outside AWS's patterns (400
InvalidRequestException), a body that is not a JSON object (400
SerializationException) and a bad ``maxResults`` (400).
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_iot import IoTClient
    from mypy_boto3_iot_data import IoTDataPlaneClient
    from paho.mqtt.client import Client
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from simulators._regions import LocalRegions

pytestmark = pytest.mark.integration

JsonObject = dict[str, Any]
PRIMARY, SECONDARY = "us-east-1", "us-west-2"
WAIT_S = 5.0
# One attempt: botocore retries 5xx answers, which would hide what the server said.
NO_RETRIES = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=5
)
LAMP_STATE: JsonObject = {"reported": {"on": True, "note": "n" * 4000}}


def _iot(regions: LocalRegions, region: str) -> IoTClient:
    return boto3.client(
        "iot",
        region_name=region,
        endpoint_url=regions.endpoints()["control_plane_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def _data(regions: LocalRegions, region: str) -> IoTDataPlaneClient:
    return boto3.client(
        "iot-data",
        region_name=region,
        endpoint_url=regions.shadows(region).url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def _status(error: botocore.exceptions.ClientError) -> int:
    status: int = error.response["ResponseMetadata"]["HTTPStatusCode"]
    return status


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code"))


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An HTTP answer as it came off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> JsonObject:
        doc: JsonObject = json.loads(self.body)
        return doc


def _raw(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    region: str = PRIMARY,
    service: str = "iot",
    signed: bool = True,
) -> RawResponse:
    """One request to ``url + path``, SigV4-signed with the fake credentials or not at all."""
    address = urlsplit(url)
    assert address.hostname is not None
    assert address.hostname.startswith("127.0.0."), "loopback only"
    headers = {"Content-Type": "application/json"}
    if signed:
        request = AWSRequest(method=method, url=url + path, data=body, headers=headers)
        SigV4Auth(Credentials("testing", "testing"), service, region).add_auth(request)
        headers = dict(request.headers.items())
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=WAIT_S)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def _assert_regions_work(regions: LocalRegions) -> None:
    """Both regions answer normal control-plane and iot-data calls; the processes live."""
    assert regions.control_plane is not None
    assert regions.control_plane.is_running
    for region in (PRIMARY, SECONDARY):
        iot = _iot(regions, region)
        name = f"ok-{uuid.uuid4().hex[:8]}"
        iot.create_thing(thingName=name)
        assert iot.describe_thing(thingName=name)["thingName"] == name
        data = _data(regions, region)
        data.update_thing_shadow(thingName=name, payload=b'{"state":{"reported":{"ok":1}}}')
        shadow = json.loads(data.get_thing_shadow(thingName=name)["payload"].read())
        assert shadow["state"]["reported"] == {"ok": 1}


class ShadowWatcher:
    """A client on a region broker's plain listener: publishes requests, collects answers."""

    def __init__(self, regions: LocalRegions, region: str) -> None:
        broker = regions.broker(region)
        self.probe = ProbeClient(f"bad-input-{uuid.uuid4().hex[:8]}")
        self._granted: queue.Queue[int] = queue.Queue()
        self.probe.client.on_subscribe = self._on_subscribe
        assert self.probe.connect(broker.host, broker.port), self.probe.reason
        self.seen: list[tuple[str, JsonObject]] = []

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._granted.put(mid)

    def subscribe(self, *filters: str) -> None:
        _, mid = self.probe.client.subscribe([(f, 1) for f in filters])
        assert self._granted.get(timeout=WAIT_S) == mid

    def publish(self, topic: str, payload: bytes) -> None:
        self.probe.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def expect(self, topic: str) -> JsonObject:
        """The next message on ``topic``; the ones before it stay in :attr:`seen`."""
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, payload = self.probe.messages.get(timeout=left)
            except queue.Empty:
                break
            doc: JsonObject = json.loads(payload) if payload else {}
            self.seen.append((got, doc))
            if got == topic:
                return doc
        pytest.fail(f"nothing on {topic} within {WAIT_S} s; seen: {[t for t, _ in self.seen]}")

    def close(self) -> None:
        self.probe.close()


@pytest.fixture
def watcher(local_regions: LocalRegions) -> Iterator[ShadowWatcher]:
    """Subscribed to every shadow answer of the primary region."""
    client = ShadowWatcher(local_regions, PRIMARY)
    client.subscribe(
        "$aws/things/+/shadow/+/+",  # update/accepted, update/rejected, update/delta...
        "$aws/things/+/shadow/name/+/+/+",
    )
    yield client
    client.close()


# -- shadows --------------------------------------------------------------------------------


def _shadow_topic(thing: str, name: str | None, suffix: str) -> str:
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{name}/{suffix}" if name is not None else f"{base}/{suffix}"


def _update(reported: JsonObject, token: str | None = None) -> bytes:
    doc: JsonObject = {"state": {"reported": reported}}
    if token is not None:
        doc["clientToken"] = token
    return json.dumps(doc).encode()


@dataclass(frozen=True, slots=True)
class BadShadowUpdate:
    """An update AWS refuses: where it goes, what it carries, how AWS answers."""

    thing: str
    name: str | None
    payload: bytes
    code: int
    message: str
    error: str  # botocore's error code over HTTP
    token: str | None = None


BAD_SHADOW_UPDATES = {
    "malformed JSON": BadShadowUpdate(
        "lamp",
        None,
        b'{"state": {"reported": {"on": ',
        400,
        "Payload contains invalid json",
        "InvalidRequestException",
    ),
    "JSON that is not an object": BadShadowUpdate(
        "lamp", None, b'["state"]', 400, "Payload contains invalid json", "InvalidRequestException"
    ),
    "not UTF-8": BadShadowUpdate(
        "lamp",
        None,
        b'{"state": {"reported": {"on": "\xff"}}}',
        415,
        "Unsupported documented encoding; supported encoding is UTF-8",
        "UnsupportedDocumentEncodingException",
    ),
    "a request over 8 KB": BadShadowUpdate(
        "lamp",
        None,
        _update({"blob": "x" * 8300}, token="big-1"),
        413,
        "",
        "RequestEntityTooLargeException",
        token="big-1",
    ),
    # Under 8 KB itself, but the merged document would not be: AWS counts the result.
    "a document growing past 8 KB": BadShadowUpdate(
        "lamp",
        None,
        _update({"more": "m" * 4500}, token="grow-1"),
        413,
        "",
        "RequestEntityTooLargeException",
        token="grow-1",
    ),
    "a thing name with a dot": BadShadowUpdate(
        "lamp.1", None, _update({"on": True}), 400, "Invalid thing name", "InvalidRequestException"
    ),
    "a thing name of 129 characters": BadShadowUpdate(
        "t" * 129, None, _update({"on": True}), 400, "Invalid thing name", "InvalidRequestException"
    ),
    "a shadow name with a dot": BadShadowUpdate(
        "lamp",
        "cfg.v1",
        _update({"on": True}),
        400,
        "Invalid shadow name",
        "InvalidRequestException",
    ),
    "a shadow name of 65 characters": BadShadowUpdate(
        "lamp",
        "s" * 65,
        _update({"on": True}),
        400,
        "Invalid shadow name",
        "InvalidRequestException",
    ),
}


def _seed_lamp(regions: LocalRegions) -> JsonObject:
    """The primary's ``lamp`` shadow at version 1, about 4 KB; returns its document."""
    data = _data(regions, PRIMARY)
    seed = {"state": LAMP_STATE, "clientToken": "seed"}
    data.update_thing_shadow(thingName="lamp", payload=json.dumps(seed).encode())
    doc: JsonObject = json.loads(data.get_thing_shadow(thingName="lamp")["payload"].read())
    return doc


def _assert_lamp_untouched(regions: LocalRegions, before: JsonObject) -> None:
    data = _data(regions, PRIMARY)
    after = json.loads(data.get_thing_shadow(thingName="lamp")["payload"].read())
    assert (after["version"], after["state"], after["metadata"]) == (
        before["version"],
        before["state"],
        before["metadata"],
    )
    assert data.list_named_shadows_for_thing(thingName="lamp")["results"] == []
    assert len(regions.shadows(PRIMARY).store) == 1
    assert len(regions.shadows(SECONDARY).store) == 0


@pytest.mark.parametrize("case", list(BAD_SHADOW_UPDATES.values()), ids=list(BAD_SHADOW_UPDATES))
def test_a_bad_shadow_update_over_mqtt_gets_rejected_and_nothing_else(
    local_regions: LocalRegions, watcher: ShadowWatcher, case: BadShadowUpdate
) -> None:
    before = _seed_lamp(local_regions)
    watcher.publish(_shadow_topic(case.thing, case.name, "update"), case.payload)

    rejected = watcher.expect(_shadow_topic(case.thing, case.name, "update/rejected"))
    assert rejected["code"] == case.code
    assert case.message in rejected["message"]
    assert isinstance(rejected["timestamp"], int)
    assert rejected.get("clientToken") == case.token
    _assert_lamp_untouched(local_regions, before)

    # The next good request is answered, and the bad one got nothing but its rejection.
    watcher.publish(_shadow_topic("lamp", None, "update"), _update({"on": False}, "good-1"))
    accepted = watcher.expect(_shadow_topic("lamp", None, "update/accepted"))
    assert (accepted["version"], accepted["clientToken"]) == (2, "good-1")
    answers = [t for t, doc in watcher.seen if doc.get("clientToken") not in ("seed", "good-1")]
    assert answers == [_shadow_topic(case.thing, case.name, "update/rejected")]
    _assert_regions_work(local_regions)


@pytest.mark.parametrize("case", list(BAD_SHADOW_UPDATES.values()), ids=list(BAD_SHADOW_UPDATES))
def test_a_bad_shadow_update_over_http_gets_its_status_and_error_code(
    local_regions: LocalRegions, watcher: ShadowWatcher, case: BadShadowUpdate
) -> None:
    before = _seed_lamp(local_regions)
    data = _data(local_regions, PRIMARY)
    named = {"shadowName": case.name} if case.name is not None else {}

    with pytest.raises(botocore.exceptions.ClientError) as info:
        data.update_thing_shadow(thingName=case.thing, payload=case.payload, **named)
    assert (_status(info.value), _code(info.value)) == (case.code, case.error)
    assert case.message in info.value.response["Error"]["Message"]
    _assert_lamp_untouched(local_regions, before)

    # AWS publishes nothing on MQTT for a refused REST request; the next good one is published.
    data.update_thing_shadow(thingName="lamp", payload=_update({"on": False}, "good-1"))
    watcher.expect(_shadow_topic("lamp", None, "update/accepted"))
    assert not [topic for topic, _ in watcher.seen if topic.endswith("/rejected")]
    _assert_regions_work(local_regions)


def test_bad_get_and_delete_names_over_mqtt_are_rejected_with_the_token(
    local_regions: LocalRegions, watcher: ShadowWatcher
) -> None:
    for operation in ("get", "delete"):
        for thing, name in (("lamp.1", None), ("lamp", "cfg.v1")):
            watcher.publish(
                _shadow_topic(thing, name, operation), json.dumps({"clientToken": "t-9"}).encode()
            )
            rejected = watcher.expect(_shadow_topic(thing, name, f"{operation}/rejected"))
            assert (rejected["code"], rejected["clientToken"]) == (400, "t-9")
            assert "Invalid" in rejected["message"]
    _assert_regions_work(local_regions)


def test_a_rejected_mqtt_shadow_request_is_logged_once(
    local_regions: LocalRegions, watcher: ShadowWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="simulators.shadows")
    caplog.clear()
    watcher.publish(_shadow_topic("lamp-log", None, "update"), b"{not json")
    watcher.expect(_shadow_topic("lamp-log", None, "update/rejected"))
    mentions = [
        record
        for record in caplog.records
        if record.name.startswith("simulators.shadows") and "lamp-log" in str(record.__dict__)
    ]
    assert len(mentions) == 1


# -- a region that does not exist -----------------------------------------------------------

MARS = "eu-mars-1"


def test_a_region_that_does_not_exist_disturbs_no_region(local_regions: LocalRegions) -> None:
    mars = _iot(local_regions, MARS)
    for call in (
        lambda: mars.create_thing(thingName="rover"),
        lambda: mars.describe_thing(thingName="rover"),
        mars.list_things,
    ):
        with pytest.raises(botocore.exceptions.ClientError):
            call()
    for region in (PRIMARY, SECONDARY):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            _iot(local_regions, region).describe_thing(thingName="rover")
        assert _code(info.value) == "ResourceNotFoundException"
    _assert_regions_work(local_regions)


def test_a_region_that_does_not_exist_is_refused_with_a_client_error(
    local_regions: LocalRegions,
) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        _iot(local_regions, MARS).list_things()
    assert 400 <= _status(info.value) < 500, info.value.response.get("Error")
    assert _code(info.value) != "InternalFailureException"


# -- an API that does not exist -------------------------------------------------------------

UNKNOWN_APIS = [("GET", "/no-such-api"), ("DELETE", "/things"), ("PUT", "/thing-groups")]
_TARGETS = [
    pytest.param("control plane", True, id="control-plane-signed"),
    pytest.param("control plane", False, id="control-plane-unsigned"),
    pytest.param("data", True, id="iot-data-signed"),
    pytest.param("data", False, id="iot-data-unsigned"),
]


def _target_url(regions: LocalRegions, target: str) -> str:
    if target == "control plane":
        url: str = regions.endpoints()["control_plane_url"]
        return url
    return regions.shadows(PRIMARY).url


@pytest.mark.parametrize(("target", "signed"), _TARGETS)
def test_an_unknown_api_gets_a_client_error_and_disturbs_nothing(
    local_regions: LocalRegions, target: str, signed: bool
) -> None:
    url = _target_url(local_regions, target)
    service = "iot" if target == "control plane" else "iotdata"
    for method, path in UNKNOWN_APIS:
        response = _raw(url, method, path, body=b"{}", service=service, signed=signed)
        assert 400 <= response.status < 500, (method, path, response)
    _assert_regions_work(local_regions)


@pytest.mark.parametrize(
    ("target", "signed"),
    [
        pytest.param("control plane", True, id="control-plane-signed"),
        pytest.param("control plane", False, id="control-plane-unsigned"),
        pytest.param("data", True, id="iot-data-signed"),
        pytest.param("data", False, id="iot-data-unsigned"),
    ],
)
def test_an_unknown_api_gets_an_aws_style_error(
    local_regions: LocalRegions, target: str, signed: bool
) -> None:
    url = _target_url(local_regions, target)
    service = "iot" if target == "control plane" else "iotdata"
    response = _raw(url, "GET", "/no-such-api", service=service, signed=signed)
    assert 400 <= response.status < 500
    assert response.headers.get("x-amzn-errortype"), response.headers
    assert response.headers.get("content-type", "").startswith("application/json")
    assert isinstance(response.json().get("message"), str)


def test_a_path_under_an_api_that_is_no_api_creates_nothing(local_regions: LocalRegions) -> None:
    url = local_regions.endpoints()["control_plane_url"]
    response = _raw(url, "POST", "/things/lamp/nonsense", body=b"{}")
    assert 400 <= response.status < 500, response
    assert _things(_iot(local_regions, PRIMARY)) == []


def _things(iot: Any) -> list[str]:
    """The region's things, less the health checker's own."""
    names = [t["thingName"] for t in iot.list_things()["things"]]
    return [n for n in names if n != "iotdr-health-checker"]


# -- invalid names and malformed requests on the control plane ------------------------------


@pytest.mark.parametrize("name", ["bad name", "bad.dot", "bad/slash", "t" * 129])
def test_an_invalid_thing_name_is_refused_by_the_control_plane(
    local_regions: LocalRegions, name: str
) -> None:
    iot = _iot(local_regions, PRIMARY)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        iot.create_thing(thingName=name)
    assert (_status(info.value), _code(info.value)) == (400, "InvalidRequestException")
    assert _things(iot) == []


MALFORMED_CALLS = {
    "CreateThing with a body that is not JSON": ("POST", "/things/lamp", b'{"attributePayload'),
    "CreateThingGroup with a JSON array body": ("POST", "/thing-groups/hall", b"[1, 2]"),
    "ListThings with maxResults=abc": ("GET", "/things?maxResults=abc", b""),
}


@pytest.mark.parametrize(
    ("method", "path", "body"), list(MALFORMED_CALLS.values()), ids=list(MALFORMED_CALLS)
)
def test_a_malformed_control_plane_call_disturbs_nothing(
    local_regions: LocalRegions, method: str, path: str, body: bytes
) -> None:
    url = local_regions.endpoints()["control_plane_url"]
    response = _raw(url, method, path, body=body)
    assert response.headers.get("x-amzn-requestid")  # answered, not dropped
    _assert_regions_work(local_regions)


@pytest.mark.parametrize(
    ("method", "path", "body"), list(MALFORMED_CALLS.values()), ids=list(MALFORMED_CALLS)
)
def test_a_malformed_control_plane_call_is_refused_with_a_client_error(
    local_regions: LocalRegions, method: str, path: str, body: bytes
) -> None:
    url = local_regions.endpoints()["control_plane_url"]
    response = _raw(url, method, path, body=body)
    assert 400 <= response.status < 500, response
    assert response.headers.get("x-amzn-errortype")
