"""Each region's shadow service on loopback: boto3's iot-data client, MQTT on the region broker."""

from __future__ import annotations

import http.client
import json
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from simulators.shadows import ShadowService
from tests.mqtt_probe import ProbeClient

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_iot_data import IoTDataPlaneClient
    from paho.mqtt.client import Client
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from simulators import Broker

pytestmark = pytest.mark.integration

JsonObject = dict[str, Any]
WAIT_S = 5.0


@pytest.fixture
def services(region_brokers: dict[str, Broker]) -> Iterator[dict[str, ShadowService]]:
    """A shadow service per region, on the region's address, bridged to its broker."""
    started: dict[str, ShadowService] = {}
    try:
        for region, broker in region_brokers.items():
            service = ShadowService(
                region, http_host=broker.host, broker=(broker.host, broker.port)
            )
            service.start()
            started[region] = service
        yield started
    finally:
        for service in started.values():
            service.stop()


def _iot_data(url: str, region: str) -> IoTDataPlaneClient:
    assert url.startswith("http://127.0.0.")  # loopback only, fake credentials
    return boto3.client(
        "iot-data",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=5),
    )


def _client(service: ShadowService) -> IoTDataPlaneClient:
    return _iot_data(service.url, service.region)


def _payload(response: Any) -> JsonObject:
    doc: JsonObject = json.loads(response["payload"].read())
    return doc


class Subscriber:
    """A plain-listener MQTT client that waits for its subscriptions and for messages."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.probe = ProbeClient(client_id)
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

    def publish(self, topic: str, payload: object) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.probe.client.publish(topic, data, qos=1).wait_for_publish(WAIT_S)

    def expect(self, topic: str, timeout_s: float = WAIT_S) -> JsonObject:
        """The next message on ``topic`` (others are kept in :attr:`seen`)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, payload = self.probe.messages.get(timeout=left)
            except queue.Empty:
                break
            doc: JsonObject = json.loads(payload) if payload else {}
            self.seen.append((got, doc))
            if got == topic:
                return doc
        pytest.fail(f"nothing on {topic} within {timeout_s} s; seen: {self.seen}")

    def drain(self, quiet_s: float) -> list[str]:
        """Topics of the messages that arrive until none came for ``quiet_s``."""
        topics: list[str] = []
        while True:
            try:
                topic, _ = self.probe.messages.get(timeout=quiet_s)
            except queue.Empty:
                return topics
            topics.append(topic)

    def close(self) -> None:
        self.probe.close()


@pytest.fixture
def subscriber(region_brokers: dict[str, Broker]) -> Iterator[Subscriber]:
    """An MQTT client on us-east-1's broker (mosquitto, or the amqtt fallback)."""
    client = Subscriber(region_brokers["us-east-1"], "shadow-test-subscriber")
    yield client
    client.close()


def test_boto3_get_update_list_delete(services: dict[str, ShadowService]) -> None:
    client = _client(services["us-east-1"])
    update = b'{"state":{"desired":{"color":"red"},"reported":{"color":"blue"}}}'
    accepted = _payload(client.update_thing_shadow(thingName="lamp", payload=update))
    assert accepted["state"] == {"desired": {"color": "red"}, "reported": {"color": "blue"}}
    assert accepted["version"] == 1
    document = _payload(client.get_thing_shadow(thingName="lamp"))
    assert document["state"]["delta"] == {"color": "red"}
    assert document["metadata"]["desired"]["color"]["timestamp"] == accepted["timestamp"]

    for name in ("cfg", "$ota"):
        client.update_thing_shadow(thingName="lamp", shadowName=name, payload=b'{"state":{}}')
    named = _payload(client.get_thing_shadow(thingName="lamp", shadowName="cfg"))
    assert named["version"] == 1
    listed = client.list_named_shadows_for_thing(thingName="lamp", pageSize=1)
    assert listed["results"] == ["$ota"]
    rest = client.list_named_shadows_for_thing(thingName="lamp", nextToken=listed["nextToken"])
    assert rest["results"] == ["cfg"]
    assert "nextToken" not in rest

    deleted = _payload(client.delete_thing_shadow(thingName="lamp"))
    assert deleted["version"] == 1
    with pytest.raises(client.exceptions.ResourceNotFoundException, match="'lamp'"):
        client.get_thing_shadow(thingName="lamp")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_thing_shadow(thingName="lamp")
    assert _payload(client.get_thing_shadow(thingName="lamp", shadowName="cfg"))["version"] == 1


def test_boto3_errors_are_the_modelled_exceptions(services: dict[str, ShadowService]) -> None:
    client = _client(services["us-east-1"])
    client.update_thing_shadow(thingName="lamp", payload=b'{"state":{"reported":{"on":true}}}')
    stale = b'{"state":{"reported":{"on":false}},"version":7}'
    with pytest.raises(client.exceptions.ConflictException, match="Version conflict"):
        client.update_thing_shadow(thingName="lamp", payload=stale)
    big = json.dumps({"state": {"reported": {"blob": "x" * 9000}}}).encode()
    with pytest.raises(client.exceptions.RequestEntityTooLargeException):
        client.update_thing_shadow(thingName="lamp", payload=big)
    with pytest.raises(client.exceptions.InvalidRequestException, match="invalid json"):
        client.update_thing_shadow(thingName="lamp", payload=b"{not json")
    with pytest.raises(client.exceptions.InvalidRequestException, match="thing name"):
        client.get_thing_shadow(thingName="bad.name")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_named_shadows_for_thing(thingName="lamp", pageSize=500)
    assert _payload(client.get_thing_shadow(thingName="lamp"))["version"] == 1


def test_boto3_publish_reaches_mqtt_subscribers(
    services: dict[str, ShadowService], subscriber: Subscriber
) -> None:
    subscriber.subscribe("dt/lamp/telemetry")
    _client(services["us-east-1"]).publish(
        topic="dt/lamp/telemetry", qos=1, payload=b'{"temp": 21}'
    )
    assert subscriber.expect("dt/lamp/telemetry") == {"temp": 21}


def test_mqtt_requests_get_the_documents_http_sees(
    services: dict[str, ShadowService], subscriber: Subscriber
) -> None:
    client = _client(services["us-east-1"])
    for name in (None, "cfg"):
        base = "$aws/things/lamp/shadow" + (f"/name/{name}" if name else "")
        subscriber.subscribe(f"{base}/update/accepted", f"{base}/get/+", f"{base}/delete/+")
        request = {"state": {"reported": {"on": True}}, "clientToken": "t-1"}
        subscriber.publish(f"{base}/update", request)
        accepted = subscriber.expect(f"{base}/update/accepted")
        assert (accepted["version"], accepted["clientToken"]) == (1, "t-1")
        subscriber.publish(f"{base}/get", {"clientToken": "t-2"})
        over_mqtt = subscriber.expect(f"{base}/get/accepted")
        assert over_mqtt.pop("clientToken") == "t-2"
        kwargs = {"shadowName": name} if name else {}
        over_http = _payload(client.get_thing_shadow(thingName="lamp", **kwargs))
        for doc in (over_mqtt, over_http):
            doc.pop("timestamp")
        assert over_mqtt == over_http
        subscriber.publish(f"{base}/delete", b"")
        assert subscriber.expect(f"{base}/delete/accepted")["version"] == 1
        subscriber.publish(f"{base}/get", b"")
        rejected = subscriber.expect(f"{base}/get/rejected")
        assert rejected["code"] == 404


def test_http_updates_reach_mqtt_and_mqtt_updates_reach_http(
    services: dict[str, ShadowService], subscriber: Subscriber
) -> None:
    client = _client(services["us-east-1"])
    base = "$aws/things/lamp/shadow"
    subscriber.subscribe(f"{base}/update/documents", f"{base}/update/delta")

    client.update_thing_shadow(thingName="lamp", payload=b'{"state":{"desired":{"level":3}}}')
    delta = subscriber.expect(f"{base}/update/delta")
    assert (delta["state"], delta["version"]) == ({"level": 3}, 1)
    documents = subscriber.expect(f"{base}/update/documents")
    assert "previous" not in documents
    assert documents["current"]["state"] == {"desired": {"level": 3}}

    subscriber.publish(f"{base}/update", {"state": {"reported": {"level": 3}}})
    documents = subscriber.expect(f"{base}/update/documents")
    assert documents["previous"]["version"] == 1
    assert documents["current"]["version"] == 2
    shadow = _payload(client.get_thing_shadow(thingName="lamp"))
    assert shadow["state"] == {"desired": {"level": 3}, "reported": {"level": 3}}
    assert shadow["version"] == 2


def test_regions_are_isolated(services: dict[str, ShadowService]) -> None:
    east, west = (
        _client(services["us-east-1"]),
        _client(services["us-west-2"]),
    )
    assert services["us-east-1"].url != services["us-west-2"].url
    east.update_thing_shadow(thingName="lamp", payload=b'{"state":{"reported":{"r":"east"}}}')
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.get_thing_shadow(thingName="lamp")
    west.update_thing_shadow(thingName="lamp", payload=b'{"state":{"reported":{"r":"west"}}}')
    assert _payload(east.get_thing_shadow(thingName="lamp"))["state"]["reported"] == {"r": "east"}
    assert len(services["us-east-1"].store) == len(services["us-west-2"].store) == 1


def test_malformed_json_over_mqtt_is_rejected_and_serving_goes_on(
    services: dict[str, ShadowService], subscriber: Subscriber
) -> None:
    base = "$aws/things/lamp/shadow"
    subscriber.subscribe(f"{base}/update/rejected", f"{base}/update/accepted")
    subscriber.publish(f"{base}/update", b"{this is not json")
    rejected = subscriber.expect(f"{base}/update/rejected")
    assert (rejected["code"], rejected["message"]) == (400, "Payload contains invalid json")
    subscriber.publish(f"{base}/update", {"state": {"reported": {"ok": 1}}})
    assert subscriber.expect(f"{base}/update/accepted")["version"] == 1
    bridge = services["us-east-1"].bridge
    assert bridge is not None
    assert bridge.connected


def test_the_service_answers_each_request_once_and_never_itself(
    services: dict[str, ShadowService], subscriber: Subscriber
) -> None:
    subscriber.subscribe("$aws/things/lamp/shadow/#")
    subscriber.publish("$aws/things/lamp/shadow/update", {"state": {"desired": {"a": 1}}})
    topics = subscriber.drain(quiet_s=0.5)
    assert sorted(topics) == [
        "$aws/things/lamp/shadow/update",
        "$aws/things/lamp/shadow/update/accepted",
        "$aws/things/lamp/shadow/update/delta",
        "$aws/things/lamp/shadow/update/documents",
    ]


# amqtt closes the connection of a client that publishes to a topic starting with "$";
# the embedded broker lets AWS IoT's $aws/... topics through (simulators/_amqtt_main.py).
@pytest.mark.parametrize("broker_kind", ["amqtt"])
def test_the_amqtt_broker_carries_the_shadow_topics(
    services: dict[str, ShadowService], subscriber: Subscriber, broker_kind: str
) -> None:
    base = "$aws/things/lamp/shadow/name/cfg"
    subscriber.subscribe(f"{base}/update/accepted")
    subscriber.publish(f"{base}/update", {"state": {"reported": {"a": 1}}})
    assert subscriber.expect(f"{base}/update/accepted", timeout_s=2)["version"] == 1


def test_http_only_service_answers_publish_503_and_wrong_methods_405() -> None:
    with ShadowService("us-east-1", http_host="127.0.0.2") as service:
        client = _client(service)
        with pytest.raises(client.exceptions.ServiceUnavailableException):
            client.publish(topic="dt/x", payload=b"{}")
        connection = http.client.HTTPConnection("127.0.0.2", int(service.url.rsplit(":", 1)[1]))
        cases = [
            ("PUT", "/things/lamp/shadow", 405, "MethodNotAllowedException"),
            ("GET", "/things/lamp/shadow?name=", 400, "InvalidRequestException"),
            ("GET", "/nowhere", 404, "ResourceNotFoundException"),
            ("GET", "/things/lamp/shadow", 404, "ResourceNotFoundException"),
        ]
        try:
            for method, path, status, error_type in cases:
                connection.request(method, path, body=b"{}" if method == "PUT" else None)
                response = connection.getresponse()
                assert (response.status, response.getheader("x-amzn-ErrorType")) == (
                    status,
                    error_type,
                ), path
                assert "message" in json.loads(response.read())
        finally:
            connection.close()
    assert not service.running


def _ready_line(process: subprocess.Popen[str], timeout_s: float) -> JsonObject:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            pytest.fail(f"no ready line within {timeout_s} s")
    line: JsonObject = json.loads(process.stdout.readline())
    return line


def test_command_line_serves_until_sigterm(region_brokers: dict[str, Broker]) -> None:
    broker = region_brokers["us-west-2"]
    command = [sys.executable, "-m", "simulators.shadows", "--region", "us-west-2"]
    command += ["--http", f"{broker.host}:0", "--broker", f"{broker.host}:{broker.port}"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        ready = _ready_line(process, timeout_s=20)
        assert ready["region"] == "us-west-2"
        assert ready["pid"] == process.pid
        assert ready["url"].startswith(f"http://{broker.host}:")
        client = _iot_data(ready["url"], "us-west-2")
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_thing_shadow(thingName="x")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_line_refuses_addresses_off_loopback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.shadows", "--region", "r", "--http", "10.1.2.3:0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not a loopback" in lines[0]


def test_concurrent_http_updates_all_count(services: dict[str, ShadowService]) -> None:
    client = _client(services["us-west-2"])
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for n in range(10):
                doc = {"state": {"reported": {f"w{index}": n}}}
                client.update_thing_shadow(thingName="busy", payload=json.dumps(doc).encode())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert _payload(client.get_thing_shadow(thingName="busy"))["version"] == 40
