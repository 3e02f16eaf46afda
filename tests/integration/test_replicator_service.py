"""The replicator's operations on the local regions: the service's endpoints, JSON logs and
SIGTERM as a child process; the Lambda handler's batches, with the secondary up and down.

Every wait is a poll with a deadline; every address is on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from replicator import lambda_handler
from tests.integration.test_replicator_live import (
    EAST,
    WEST,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mypy_boto3_iot import IoTClient

    from simulators._regions import LocalRegions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGTERM"),
]

ROOT = Path(__file__).resolve().parents[2]


def control_plane_url(regions: LocalRegions) -> str:
    assert regions.control_plane is not None
    url = regions.control_plane.url
    assert url.startswith("http://127.0.0.1:")
    return url


def iot(regions: LocalRegions, region: str) -> IoTClient:
    return boto3.client(
        "iot",
        region_name=region,
        endpoint_url=control_plane_url(regions),
        config=Config(retries={"mode": "adaptive", "max_attempts": 10}),
    )


def things_in(client: IoTClient) -> set[str]:
    names: set[str] = set()
    for page in client.get_paginator("list_things").paginate():
        names |= {t["thingName"] for t in page["things"]}
    return names


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


# -- the service as a child process -------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def region_down_then_up(
    local_regions: LocalRegions, base: str, east: IoTClient, west: IoTClient
) -> None:
    """The secondary's control plane answers 503: changes end 'unavailable', not ready."""
    local_regions.set_control_plane(WEST, "http503")
    try:
        for n in (2, 3, 4):
            east.create_thing(thingName=f"lamp-{n}")
        wait_for("not ready", lambda: get(f"{base}/readyz")[0] == 503, 90)
        status, reason = get(f"{base}/readyz")
        assert status == 503
        assert "a region is unreachable" in reason
        assert get(f"{base}/healthz")[0] == 200  # alive: nothing to restart
    finally:
        local_regions.set_control_plane(WEST, "up")
    wait_for("ready again", lambda: get(f"{base}/readyz")[0] == 200, 90)
    wanted = {f"lamp-{n}" for n in (1, 2, 3, 4)}
    wait_for("the rest replicated", lambda: things_in(west) >= wanted, 90)
    found = samples(get(f"{base}/metrics")[1])
    assert found["iotdr_replicator_changes_total", (("kind", "thing"), ("result", "unavailable"))]


def assert_json_logs(err: Path) -> None:
    """Lifecycle lines and the engine's records come out as JSON with their fields."""
    logs = json_lines(err)
    by_event = {line["event"]: line for line in logs}
    assert by_event["replicator.started"]["target"] == WEST  # lifecycle fields, as JSON
    assert by_event["replicator.started"]["level"] == "info"
    assert by_event["replicator.stopped"]["applied"] >= 4
    assert by_event["replicator.applied"]["key"].startswith("thing/")
    assert by_event["replicator.apply.retry"]["reason"].startswith("RegionUnavailableError")


def test_service_probes_metrics_json_logs_and_sigterm(
    local_regions: LocalRegions, tmp_path: Path
) -> None:
    broker = local_regions.broker(EAST)
    if broker.kind != "mosquitto":
        pytest.skip("registry events need mosquitto (amqtt refuses topics starting with '$')")
    plane = control_plane_url(local_regions)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    command = [
        sys.executable, "-m", "device_agent.cli", "--log-json", "replicator", "run",
        "--primary-region", EAST, "--secondary-region", WEST,
        "--primary-endpoint-url", plane, "--secondary-endpoint-url", plane,
        "--primary-data-endpoint-url", local_regions.shadows(EAST).url,
        "--secondary-data-endpoint-url", local_regions.shadows(WEST).url,
        "--feed", f"{broker.host}:{broker.port}", "--feed-client-id", "iotdr-service-test",
        "--journal", str(tmp_path / "journal.db"), "--thing-recheck", "0",
        "--listen", "127.0.0.1:0", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    east, west = iot(local_regions, EAST), iot(local_regions, WEST)
    try:
        wait_for(
            "the started line",
            lambda: any(e["event"] == "replicator.started" for e in json_lines(out)),
        )
        [started] = [e for e in json_lines(out) if e["event"] == "replicator.started"]
        base = str(started["listen"])
        assert base.startswith("http://127.0.0.1:")
        assert get(f"{base}/healthz") == (200, "ok\n")
        wait_for("ready", lambda: get(f"{base}/readyz")[0] == 200)

        east.create_thing(thingName="lamp-1", attributePayload={"attributes": {"room": "hall"}})
        wait_for("lamp-1 in the secondary", lambda: "lamp-1" in things_in(west))
        wait_for(
            "the outcome counted",
            lambda: (
                samples(get(f"{base}/metrics")[1]).get(
                    ("iotdr_replicator_changes_total", (("kind", "thing"), ("result", "done")))
                )
                == 1
            ),
        )
        found = samples(get(f"{base}/metrics")[1])
        assert found["iotdr_replicator_lag_seconds_count", (("kind", "thing"),)] == 1
        assert found["iotdr_replicator_writes_total", (("api", "CreateThing"),)] == 1
        assert found["iotdr_replicator_feed_messages_total", (("outcome", "accepted"),)] >= 1
        assert found["iotdr_replicator_feed_subscribed", ()] == 1
        assert found["iotdr_replicator_queue_dead", ()] == 0
        assert found["iotdr_replicator_ready", ()] == 1

        region_down_then_up(local_regions, base, east, west)

        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0, err.read_text()[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert get(f"{base}/healthz")[0] == 0  # the endpoints stopped with the service
    events = [line["event"] for line in json_lines(out)]
    assert events[0] == "replicator.started"
    assert events[-1] == "replicator.stopped"

    assert_json_logs(err)


# -- the Lambda handler ------------------------------------------------------------------------


def sqs_event(*messages: tuple[str, str, str]) -> dict[str, Any]:
    """SQS records (id, group, thing) as an IoT rule writes a thing's registry event."""
    records = []
    for message_id, group, thing in messages:
        body = {
            "topic": f"$aws/events/thing/{thing}/updated",
            "payload": {"operation": "UPDATED", "thingName": thing},
        }
        records.append(
            {
                "messageId": message_id,
                "body": json.dumps(body),
                "attributes": {"MessageGroupId": group},
                "eventSource": "aws:sqs",
            }
        )
    return {"Records": records}


@pytest.fixture
def lambda_environment(
    local_regions: LocalRegions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    plane = control_plane_url(local_regions)
    for name, value in {
        "IOTDR_PRIMARY_REGION": EAST,
        "IOTDR_SECONDARY_REGION": WEST,
        "IOTDR_REPLICATOR_MODE": "complete",
        "IOTDR_PRIMARY_ENDPOINT_URL": plane,
        "IOTDR_SECONDARY_ENDPOINT_URL": plane,
        "IOTDR_PRIMARY_DATA_ENDPOINT_URL": local_regions.shadows(EAST).url,
        "IOTDR_SECONDARY_DATA_ENDPOINT_URL": local_regions.shadows(WEST).url,
        "IOTDR_REPLICATOR_JOURNAL": str(tmp_path / "lambda.db"),  # /tmp on Lambda
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_handler, "_cached", None)  # a cold container
    yield
    if lambda_handler._cached is not None:
        lambda_handler._cached.close()


@pytest.mark.usefixtures("lambda_environment")
def test_lambda_applies_batches_and_reports_what_the_secondary_refused(
    local_regions: LocalRegions,
) -> None:
    east, west = iot(local_regions, EAST), iot(local_regions, WEST)
    for name in ("door-1", "door-2", "door-3"):
        east.create_thing(thingName=name, attributePayload={"attributes": {"name": name}})

    event = sqs_event(("m1", "door-1", "door-1"))
    event["Records"].append({"messageId": "m0", "body": "{not json", "attributes": {}})
    assert lambda_handler.handler(event, None) == {"batchItemFailures": []}
    assert west.describe_thing(thingName="door-1")["attributes"] == {"name": "door-1"}
    replicator = lambda_handler._cached
    assert replicator is not None
    assert replicator.engine.journal.counts(time.time()).dead_letters == 1  # not reported

    local_regions.set_control_plane(WEST, "http503")
    try:
        event = sqs_event(
            ("m2", "door-2", "door-2"), ("m3", "door-3", "door-3"), ("m4", "door-2", "door-2")
        )
        response = lambda_handler.handler(event, None)
    finally:
        local_regions.set_control_plane(WEST, "up")
    failed = [item["itemIdentifier"] for item in response["batchItemFailures"]]
    assert failed == ["m2", "m3", "m4"]
    assert lambda_handler._cached is replicator  # built once per container

    # SQS delivers them again; the secondary answers now.
    assert lambda_handler.handler(event, None) == {"batchItemFailures": []}
    assert {"door-1", "door-2", "door-3"} <= things_in(west)
