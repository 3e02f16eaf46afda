"""``iotdr tools bulk-provision``'s observer, admitted by the local doors as the drill uses it.

One ``iotdr sim regions up`` and one replicator (complete mode, fed by the
primary's broker) for the module; bulk-provision asks it to copy the
observer (``iotdr/replicate``, published through the primary's data
endpoint). The observer connects through a region's door over mTLS (SNI: the
region's endpoint name, as on AWS) as the drill's counter does,
``<id>-<shard>-<region>``, subscribes to ``iotdr/sim/+/telemetry`` and
receives a bulk-provisioned device's telemetry, which the device sends
through the door with its own identity and policy as the drill's devices do;
in the secondary once the replicator has copied the observer's certificate
and policy. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import pytest

from device_agent.cli import main
from replicator.tools._mqtt import MqttError, _packet, _Reader, _string
from simulators.fleet._aws_target import Identity, load_identities
from tests.integration.test_tools import EAST, WEST, _errors, _ready, _regions_up, _replicator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

OBSERVER = "iotdr-fleet-observer"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state = tmp_path_factory.mktemp("observer")
    regions, endpoints = _regions_up(state)
    try:
        process, port = _replicator(endpoints, state)
        try:
            _ready(port, process)
            yield state, endpoints
        finally:
            process.terminate()
            process.wait(30)
    finally:
        regions.send_signal(signal.SIGTERM)
        regions.wait(60)


class Session:
    """One MQTT 3.1.1 session through a region's door, as the drill's counter holds it."""

    def __init__(self, sock: ssl.SSLSocket, deadline: float) -> None:
        self.sock, self.reader = sock, _Reader(sock, deadline)

    def subscribe(self, *filters: str) -> list[int]:
        """SUBSCRIBE at QoS 1; the SUBACK's return codes (0x80: refused)."""
        body = b"".join(_string(f) + b"\x01" for f in filters)
        self.sock.sendall(_packet(0x82, (7).to_bytes(2, "big") + body))
        kind, answer = self.reader.packet()
        assert kind == 0x90, hex(kind)
        return list(answer[2:])

    def publish(self, topic: str, payload: bytes) -> None:
        """PUBLISH at QoS 1 and wait for its PUBACK (a denied one closes the connection)."""
        self.sock.sendall(_packet(0x32, _string(topic) + (9).to_bytes(2, "big") + payload))
        kind, _ = self.reader.packet()
        assert kind == 0x40, hex(kind)

    def next_publish(self) -> tuple[str, bytes]:
        """The next message delivered (acknowledged when QoS 1)."""
        while True:
            kind, body = self.reader.packet()
            if kind & 0xF0 != 0x30:
                continue
            size = int.from_bytes(body[:2], "big")
            offset = 2 + size
            if kind & 0x06:
                self.sock.sendall(_packet(0x40, body[offset : offset + 2]))
                offset += 2
            return body[2 : 2 + size].decode(), body[offset:]


@contextlib.contextmanager
def _session(
    endpoints: dict[str, Any], region: str, identity: Identity, client_id: str
) -> Iterator[Session]:
    """CONNECT through ``region``'s door with ``identity``; MqttError if it is refused."""
    where = endpoints["regions"][region]
    host, _, port = where["mqtts"].rpartition(":")
    context = ssl.create_default_context(cafile=endpoints["ca"])
    context.load_cert_chain(str(identity.cert), str(identity.key))
    raw = socket.create_connection((host, int(port)), timeout=10)
    with context.wrap_socket(raw, server_hostname=where["endpoint"]) as sock:
        session = Session(sock, time.monotonic() + 15)
        sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 0x02, 0, 60]) + _string(client_id)))
        kind, body = session.reader.packet()
        if kind != 0x20 or body[1:2] != b"\x00":
            raise MqttError(f"CONNECT refused: {kind:#x} {body!r}")
        yield session
        sock.sendall(b"\xe0\x00")


def _receives_telemetry(
    endpoints: dict[str, Any], region: str, observer: Identity, device: Identity
) -> None:
    """The observer subscribes to the telemetry and receives ``device``'s, each through the door."""
    with _session(endpoints, region, observer, f"{OBSERVER}-0-{region}") as session:
        assert session.subscribe("iotdr/sim/+/telemetry") == [1]
        topic, payload = f"iotdr/sim/{device.name}/telemetry", json.dumps({"seq": 1}).encode()
        with _session(endpoints, region, device, device.name) as sender:  # its own policy
            sender.publish(topic, payload)
        assert session.next_publish() == (topic, payload)


def _bulk_provision(
    capsys: pytest.CaptureFixture[str], state: Path, out_dir: Path, base: str, *args: str
) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["tools", "bulk-provision", base, "3", "--out-dir", str(out_dir), "--processes",
                 "1", "--json", *args, "--local", str(state)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, _errors(err)
    summary: dict[str, Any] = json.loads(out)
    return summary


def test_the_observer_is_admitted_and_counts_telemetry_in_both_regions(
    local: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state, endpoints = local
    summary = _bulk_provision(capsys, state, tmp_path, "obs-")
    assert (summary["provisioned"], summary["failed"]) == (3, 0)
    assert summary["observer"]["client_id"] == OBSERVER
    run = tmp_path / summary["directory"].rsplit("/", 1)[1]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "complete"
    entry = results["observer"]
    assert (entry["client_id"], entry["certificate_id"]) == (
        OBSERVER, summary["observer"]["certificate_id"])  # fmt: skip
    assert (run / entry["key"]).stat().st_mode & 0o777 == 0o600

    identities = load_identities(run)  # what `iotdr sim run --target aws` reads
    assert identities.observer is not None
    assert identities.observer.name == OBSERVER
    assert [d.name for d in identities.devices] == ["obs-0", "obs-1", "obs-2"]
    identity = identities.observer
    devices = identities.devices

    _receives_telemetry(endpoints, EAST, identity, devices[1])
    with _session(endpoints, EAST, identity, f"{OBSERVER}-1-{EAST}") as session:
        assert session.subscribe("#", "iotdr/sim/obs-1/status", "$aws/things/+/shadow/#") == [
            0x80, 0x80, 0x80]  # fmt: skip
    for client_id in (OBSERVER, "obs-0", "someone-else"):  # the policy's client IDs only
        with pytest.raises((MqttError, OSError)), _session(endpoints, EAST, identity, client_id):
            pass

    # No event for a certificate without a thing: bulk-provision published the trigger.
    assert summary["observer"]["replication"] == "asked"
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            _receives_telemetry(endpoints, WEST, identity, devices[2])
            break
        except (MqttError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)  # the door's CONNECT quota: 1/s per client ID


def test_a_re_run_keeps_the_observer_and_no_observer_makes_none(
    local: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state, _ = local
    first = _bulk_provision(capsys, state, tmp_path / "a", "again-", "--observer-id", "drill")
    run = tmp_path / "a" / first["directory"].rsplit("/", 1)[1]
    results = json.loads((run / "results.json").read_text())
    results["status"] = "in_progress"  # as if interrupted after the observer was made
    (run / "results.json").write_text(json.dumps(results))
    again = _bulk_provision(capsys, state, tmp_path / "a", "again-", "--observer-id", "drill")
    assert (again["directory"], again["resumed"]) == (first["directory"], True)
    assert first["observer"].pop("replication") == "asked"
    assert again["observer"].pop("replication") is None  # made before: nothing to ask
    assert again["observer"] == first["observer"]  # the same certificate, not a second

    none = _bulk_provision(capsys, state, tmp_path / "b", "none-", "--no-observer")
    assert none["observer"] is None
    run = tmp_path / "b" / none["directory"].rsplit("/", 1)[1]
    assert "observer" not in json.loads((run / "results.json").read_text())
    assert load_identities(run).observer is None

    capsys.readouterr()
    code = main(["tools", "bulk-provision", "obs-", "3", "--observer-id", "obs*",
                 "--local", str(state)])  # fmt: skip
    assert code == 2
    assert "observer client ID" in capsys.readouterr().err
