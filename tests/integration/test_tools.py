"""``iotdr tools`` against ``iotdr sim regions up`` with the replicator running (``--local``).

One ``iotdr sim regions up`` process and one replicator (complete mode, fed
by the primary's broker) for the whole module. Devices are made by ``create-device``
in the primary and replicated; then differences are planted by hand in one
region and ``compare-devices`` must name each of them. Every wait is a poll
with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from device_agent.cli import main
from replicator.tools import _bulk, _devices
from simulators._broker import free_port
from simulators.controlplane import ControlPlaneAdmin

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

EAST, WEST = "us-east-1", "us-west-2"
WAIT_S = 60.0


@dataclass
class Deployment:
    """``iotdr sim regions up`` (its endpoints and regions.json), and the replicator."""

    state: Path
    endpoints: dict[str, Any]
    replicator: subprocess.Popen[bytes]
    metrics_port: int

    def set_fault(self, region: str, mode: str) -> None:
        """``iotdr sim fault REGION MODE`` on the running regions."""
        assert main(["sim", "fault", region, mode, "--state-dir", str(self.state)]) == 0

    def set_quotas(self, region: str, quotas: dict[str, float]) -> None:
        """The region's control-plane quotas from now on ({}: the defaults)."""
        ControlPlaneAdmin(self.endpoints["control_plane_url"]).set_quotas(region, quotas)

    def replicator_idle(self) -> None:
        """Wait until nothing is pending in the replicator (its rechecks included)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as answer:
                text = answer.read().decode()
            pending = [line for line in text.splitlines()
                       if line.startswith("iotdr_replicator_queue_pending ")]  # fmt: skip
            if pending and float(pending[0].split()[1]) == 0:
                return
            time.sleep(0.2)
        pytest.fail("the replicator kept work pending")

    def iot(self, region: str) -> Any:
        url = self.endpoints["control_plane_url"]
        assert url.startswith("http://127.0.0.1:")
        return boto3.client(
            "iot", region_name=region, endpoint_url=url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"mode": "adaptive", "max_attempts": 10}),
        )  # fmt: skip


def _replicator(endpoints: dict[str, Any], state: Path) -> tuple[subprocess.Popen[bytes], int]:
    control = endpoints["control_plane_url"]
    port = free_port("127.0.0.1")
    command = [
        sys.executable, "-m", "device_agent.cli", "replicator", "run",
        "--primary-region", EAST, "--secondary-region", WEST,
        "--primary-endpoint-url", control, "--secondary-endpoint-url", control,
        "--primary-data-endpoint-url", endpoints["regions"][EAST]["data_url"],
        "--secondary-data-endpoint-url", endpoints["regions"][WEST]["data_url"],
        "--feed", endpoints["regions"][EAST]["mqtt"], "--feed-client-id", "tools-replicator",
        # A created thing is applied again 2 s later: its certificate is attached without an event.
        "--thing-recheck", "2",
        "--journal", str(state / "replicator.sqlite"), "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}  # fmt: skip
    with (state / "replicator.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    return process, port


def _ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the replicator exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("the replicator did not get ready")


def _regions_up(state: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``iotdr sim regions up`` on free ports, and the endpoints of its ready line."""
    with (state / "regions.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim", "regions",
             "up", "--state-dir", str(state), "--mqtt-port", "0", "--mqtts-port", "0",
             "--data-port", "0", "--control-plane-port", "0", "--dns-port", "0", "--json"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # the ready line (the process exits, and EOF, on failure)
    if not line:
        process.wait(30)
        pytest.fail(f"iotdr sim regions up did not start: {(state / 'regions.log').read_text()}")
    return process, json.loads(line)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("tools")
    regions, endpoints = _regions_up(state)
    try:
        assert (state / "regions.json").exists()
        process, port = _replicator(endpoints, state)
        try:
            _ready(port, process)
            deployment = Deployment(state, endpoints, process, port)
            for region in (EAST, WEST):  # what search needs (enable-events' test turns it off)
                deployment.iot(region).update_indexing_configuration(
                    thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"}
                )
            yield deployment
        finally:
            process.terminate()
            process.wait(30)
    finally:
        regions.send_signal(signal.SIGTERM)
        regions.wait(60)


def _errors(err: str) -> str:
    """The command's own lines on stderr (the doors run in this process and log there too)."""
    assert "Traceback" not in err
    return "\n".join(line for line in err.splitlines() if line.startswith("iotdr:"))


def tools(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, *args: str
) -> tuple[int, str, str]:
    """Run ``iotdr tools ARGS --local STATE``; exit code, stdout, the command's stderr lines."""
    capsys.readouterr()
    code = main(["tools", *args, "--local", str(deployment.state)])
    out, err = capsys.readouterr()
    return code, out, _errors(err)


def _compare_until_identical(
    capsys: pytest.CaptureFixture[str], deployment: Deployment
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, out, _ = tools(
            capsys, deployment, "compare-devices", "--query-string", "thingName:cmp-*", "--json"
        )
        report = json.loads(out)
        if code == 0:
            return report
        time.sleep(0.5)
    pytest.fail(f"the regions did not converge: {report}")


def test_enable_events_is_idempotent_and_says_what_changed(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    east, west = deployment.iot(EAST), deployment.iot(WEST)
    on = {k: {"Enabled": True} for k in ("THING", "THING_GROUP", "THING_TYPE",
          "THING_GROUP_MEMBERSHIP", "THING_GROUP_HIERARCHY", "THING_TYPE_ASSOCIATION")}  # fmt: skip
    east.update_event_configurations(eventConfigurations={**on, "THING": {"Enabled": False}})
    west.update_event_configurations(eventConfigurations=on)
    west.update_indexing_configuration(thingIndexingConfiguration={"thingIndexingMode": "OFF"})
    try:
        code, out, _ = tools(capsys, deployment, "enable-events", "--json")
    finally:  # the other tests search
        west.update_indexing_configuration(
            thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"}
        )
    assert code == 0
    changed = {r["region"]: r for r in json.loads(out)["regions"]}
    assert (changed[EAST]["events_enabled"], changed[EAST]["indexing_changed"]) == (["THING"], None)
    assert changed[WEST]["events_enabled"] == []
    assert changed[WEST]["indexing_changed"] == {"thingIndexingMode": ["OFF", "REGISTRY"]}
    assert east.describe_event_configurations()["eventConfigurations"]["THING"]["Enabled"]
    code, out, _ = tools(capsys, deployment, "enable-events")
    assert code == 0
    assert out.count("already on (nothing changed)") == 2


def test_compare_devices_exits_0_when_identical_and_names_each_planted_difference(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "own-policy.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": "arn:aws:iot:eu-west-1:123456789012:client/cmp-2"}]}))  # fmt: skip
    for i in range(4):
        extra = ["--policy", str(policy)] if i == 2 else []
        code, out, err = tools(capsys, deployment, "create-device", f"cmp-{i}", "--attributes",
                               f"color=c{i}", "--attributes", "fleet=cmp", "--out-dir",
                               str(tmp_path), "--json", *extra)  # fmt: skip
        assert code == 0, err
        created = json.loads(out)
        assert created["region"] == EAST
    assert (tmp_path / "cmp-0.private.key").stat().st_mode & 0o777 == 0o600
    own = deployment.iot(EAST).get_policy(policyName="cmp-2-policy")["policyDocument"]
    assert "arn:aws:iot:us-east-1:" in own  # the file's region set to the target's, by parsing
    report = _compare_until_identical(capsys, deployment)
    deployment.replicator_idle()  # its recheck of each new thing has run: nothing undoes a plant
    report = _compare_until_identical(capsys, deployment)
    assert report["compared"] == 4
    assert (report["not_synced"], report["errors"], report["differences"]) == (0, 0, [])

    code, out, _ = tools(capsys, deployment, "lookup", "cmp-1", "--json")
    assert code == 0
    found = json.loads(out)["regions"]
    assert found[EAST]["admission"]["admitted"] is True
    assert found[WEST]["admission"]["admitted"] is True
    assert found[WEST]["thing"]["attributes"] == {"color": "c1", "fleet": "cmp"}

    east, west = deployment.iot(EAST), deployment.iot(WEST)
    west.update_thing(thingName="cmp-0", attributePayload={"attributes": {"color": "planted"},
                                                           "merge": True})  # fmt: skip
    cert_1 = east.list_thing_principals(thingName="cmp-1")["principals"][0]
    east.update_certificate(certificateId=cert_1.rsplit("/", 1)[1], newStatus="REVOKED")
    west.create_policy_version(
        policyName="cmp-2-policy", setAsDefault=True,
        policyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}),
    )  # fmt: skip
    for principal in west.list_thing_principals(thingName="cmp-3")["principals"]:
        west.detach_thing_principal(thingName="cmp-3", principal=principal)
    west.delete_thing(thingName="cmp-3")

    code, out, _ = tools(capsys, deployment, "compare-devices", "--query-string",
                         "thingName:cmp-*", "--json")  # fmt: skip
    assert code == 1
    report = json.loads(out)
    assert (report["compared"], report["not_synced"], report["errors"]) == (4, 4, 0)
    named = {
        (d["thing"], d["field"]): (d["primary"], d["secondary"]) for d in report["differences"]
    }
    cert_1_id = cert_1.rsplit("/", 1)[1]
    assert named[("cmp-0", "attributes.color")] == ("c0", "planted")
    assert named[("cmp-1", f"certificate {cert_1_id}.status")] == ("REVOKED", "ACTIVE")
    assert ("cmp-2", "policy cmp-2-policy.document") in named
    assert named[("cmp-3", "exists")] == (True, False)
    assert len(named) == 4

    code, out, _ = tools(capsys, deployment, "compare-devices", "--query-string", "thingName:cmp-*")
    assert code == 1
    assert "DIFF cmp-3: exists: primary=true secondary=false" in out
    assert "not_synced 4, errors 0" in out

    code, out, _ = tools(capsys, deployment, "lookup", "cmp-1")
    assert code == 1
    assert "admitted: no (no ACTIVE certificate" in out
    code, out, _ = tools(capsys, deployment, "lookup", "cmp-3", "--json")
    assert code == 1
    assert json.loads(out)["regions"][WEST]["thing"] is None


def test_search_follows_next_token_and_refuses_bad_syntax(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i in range(3):
        code, _, err = tools(capsys, deployment, "create-device", f"srch-{i}", "--attributes",
                             "kind=probe", "--out-dir", str(tmp_path))  # fmt: skip
        assert code == 0, err
    query = "thingName:srch-* AND attributes.kind:probe"
    code, out, _ = tools(
        capsys, deployment, "search", "--query-string", query, "--page-size", "1", "--json"
    )
    assert code == 0
    assert [t["thingName"] for t in json.loads(out)["things"]] == ["srch-0", "srch-1", "srch-2"]
    code, out, _ = tools(capsys, deployment, "search", "--query-string", "thingName:nothing-*")
    assert code == 1
    code, _, err = tools(capsys, deployment, "search", "--query-string", "thingName:(srch")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "bad query string" in err


def test_delete_devices_cleans_up_what_nothing_else_uses(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i in range(2):
        code, _, err = tools(capsys, deployment, "create-device", f"del-{i}", "--out-dir",
                             str(tmp_path))  # fmt: skip
        assert code == 0, err
    east = deployment.iot(EAST)
    own = east.list_thing_principals(thingName="del-0")["principals"][0]
    code, _, err = tools(capsys, deployment, "delete-devices", "--query-string", "thingName:del-*")
    assert code == 2  # not at a terminal and no --force: nothing deleted
    assert "--force" in err
    assert east.describe_thing(thingName="del-0")["thingName"] == "del-0"
    code, out, err = tools(capsys, deployment, "delete-devices", "--query-string",
                           "thingName:del-*", "--force", "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["deleted"]["things"] == ["del-0", "del-1"]
    assert len(report["deleted"]["certificates"]) == 2
    assert report["deleted"]["policies"] == []  # the device policy is still used by others
    assert any("iotdr-tools-device" in k for k in report["kept"])
    with pytest.raises(east.exceptions.ResourceNotFoundException):
        east.describe_certificate(certificateId=own.rsplit("/", 1)[1])
    assert east.get_policy(policyName="iotdr-tools-device")["policyName"]


def test_bad_input_is_one_line_and_exit_2(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = tools(capsys, deployment, "create-device", "bad-0", "--policy", str(bad),
                         "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "is not JSON" in err
    with pytest.raises(deployment.iot(EAST).exceptions.ResourceNotFoundException):
        deployment.iot(EAST).describe_thing(thingName="bad-0")  # nothing was created
    assert main(["tools", "search", "--local", str(tmp_path)]) == 2
    assert "iotdr sim regions up" in _errors(capsys.readouterr().err)
    code, _, err = tools(capsys, deployment, "compare-devices", "--region", EAST)
    assert code == 2
    assert "--secondary-region" in err


def test_bulk_provision_resumes_and_extract_certs_writes_each_certificate(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = tools(capsys, deployment, "bulk-provision", "blk-", "5", "--out-dir",
                           str(tmp_path), "--processes", "2", "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["provisioned"], summary["failed"], summary["resumed"]) == (5, 0, False)
    run = tmp_path / summary["directory"].rsplit("/", 1)[1]
    assert run.name.startswith("blk--")
    results = json.loads((run / "results.json").read_text())
    assert results["format"] == "iotdr-bulk-provision/1"
    assert results["status"] == "complete"
    assert [d["thingName"] for d in results["devices"]] == [f"blk-{i}" for i in range(5)]
    assert all((run / f"blk-{i}.private.key").stat().st_mode & 0o777 == 0o600 for i in range(5))

    # As if interrupted after blk-3 and blk-4 were made but before they were recorded.
    results["devices"] = results["devices"][:3]
    results["status"] = "in_progress"
    (run / "results.json").write_text(json.dumps(results))
    code, out, err = tools(capsys, deployment, "bulk-provision", "blk-", "5", "--out-dir",
                           str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    again = json.loads(out)
    assert (again["directory"], again["resumed"], again["provisioned"]) == (str(run), True, 5)
    east = deployment.iot(EAST)
    assert len(east.list_thing_principals(thingName="blk-4")["principals"]) == 1  # not made twice

    assert main(["tools", "extract-certs", str(run / "results.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 5
    assert "BEGIN CERTIFICATE" in (run / "blk-0.certificate.pem").read_text()
    (tmp_path / "other.json").write_text(json.dumps({"devices": []}))
    assert main(["tools", "extract-certs", str(tmp_path / "other.json")]) == 2
    assert "is not a bulk result" in _errors(capsys.readouterr().err)


def test_shadow_test_counts_every_shadow_and_its_latency(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = tools(capsys, deployment, "shadow-test", "--num-tests", "6", "--max-workers",
                           "3", "--named-shadows", "1", "--timeout", "30", "--json")  # fmt: skip
    assert code == 0, (out, err)
    report = json.loads(out)
    assert (report["compared"], report["not_synced"], report["errors"]) == (12, 0, 0)
    assert report["latency_s"]["p50"] is not None
    assert report["latency_s"]["max"] >= report["latency_s"]["p50"]


def test_shadow_test_counts_what_never_arrives(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.replicator.send_signal(19)  # SIGSTOP: the replicator copies nothing for a while
    try:
        code, out, _ = tools(capsys, deployment, "shadow-test", "--num-tests", "2", "--timeout",
                             "1", "--json")  # fmt: skip
    finally:
        deployment.replicator.send_signal(18)  # SIGCONT
    assert code == 1
    report = json.loads(out)
    assert (report["compared"], report["not_synced"]) == (2, 2)
    assert all("never arrived" in f["error"] for f in report["failures"])


def test_e2e_passes_then_fails_naming_the_step_when_the_secondary_door_is_down(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = tools(capsys, deployment, "e2e", "--timeout", "30", "--json")
    report = json.loads(out)
    assert code == 0, (report, err)
    assert [s["status"] for s in report["steps"]] == ["PASS"] * 6
    name = report["device"]
    with pytest.raises(deployment.iot(EAST).exceptions.ResourceNotFoundException):
        deployment.iot(EAST).describe_thing(thingName=name)  # cleaned up
    with pytest.raises(deployment.iot(WEST).exceptions.ResourceNotFoundException):
        deployment.iot(WEST).describe_thing(thingName=name)

    deployment.set_fault(WEST, "down")
    try:
        code, out, _ = tools(capsys, deployment, "e2e", "--timeout", "5")
    finally:
        deployment.set_fault(WEST, "up")
    assert code == 1
    assert "FAIL publish/subscribe in us-west-2" in out
    assert "PASS publish/subscribe in us-east-1" in out
    assert "PASS clean up both regions" in out
    assert out.strip().splitlines()[-1] == "e2e: FAIL (publish/subscribe in us-west-2)"


def test_bulk_provision_slows_down_when_throttled_and_says_so(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployment.set_quotas(EAST, {"CreateCertificateFromCsr": 2})
    try:
        code, out, err = tools(capsys, deployment, "bulk-provision", "thr-", "5", "--out-dir",
                               str(tmp_path), "--json")  # fmt: skip
    finally:
        deployment.set_quotas(EAST, {})
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["provisioned"], summary["failed"]) == (5, 0)
    assert summary["throttled"]["us-east-1/CreateCertificateFromCsr"] >= 1
    assert "throttled (us-east-1/CreateCertificateFromCsr" in err
    assert "slowed down and carried on" in err


def test_an_unreachable_region_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    code = main(["tools", "search", "--region", EAST, "--endpoint-url", f"http://127.0.0.1:{port}"])
    assert code == 2
    lines = _errors(capsys.readouterr().err).splitlines()
    assert len(lines) == 1
    assert "unreachable" in lines[0]


def test_create_device_with_a_ca_a_type_and_groups_and_its_admission(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    east = deployment.iot(EAST)
    east.create_thing_type(thingTypeName="lamp")
    east.create_thing_group(thingGroupName="hall")
    pki = deployment.state / "pki"
    code, out, err = tools(capsys, deployment, "create-device", "ca-0", "--ca",
                           str(pki / "fleet-ca.crt"), "--ca-key", str(pki / "fleet-ca.key"),
                           "--thing-type", "lamp", "--thing-group", "hall", "--key-algorithm",
                           "rsa", "--out-dir", str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    described = east.describe_thing(thingName="ca-0")
    assert described["thingTypeName"] == "lamp"
    groups = east.list_thing_groups_for_thing(thingName="ca-0")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["hall"]
    code, out, _ = tools(capsys, deployment, "lookup", "ca-0", "--region", EAST, "--json")
    assert code == 0
    found = json.loads(out)["regions"][EAST]
    assert found["admission"]["admitted"] is True
    assert found["thing"]["thingGroups"] == ["hall"]
    code, _, err = tools(capsys, deployment, "create-device", "ca-1", "--thing-group",
                         "no-such-group", "--out-dir", str(tmp_path))  # fmt: skip
    assert code == 2
    assert "no-such-group" in err or "AddThingToThingGroup" in err


def test_ctrl_c_in_delete_devices_says_what_was_done(
    deployment: Deployment,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(3):
        code, _, err = tools(capsys, deployment, "create-device", f"int-{i}", "--out-dir",
                             str(tmp_path))  # fmt: skip
        assert code == 0, err
    real = _devices.delete_thing

    def interrupted(client: Any, name: str, report: Any) -> None:
        if name == "int-1":
            raise KeyboardInterrupt
        real(client, name, report)

    monkeypatch.setattr(_devices, "delete_thing", interrupted)
    code, out, _ = tools(capsys, deployment, "delete-devices", "--query-string", "thingName:int-*",
                         "--force")  # fmt: skip
    assert code == 130
    assert "interrupted while deleting int-1" in out
    assert "deleted 1 things" in out
    monkeypatch.setattr(_devices, "delete_thing", real)
    code, out, _ = tools(capsys, deployment, "delete-devices", "--query-string", "thingName:int-*",
                         "--force")  # fmt: skip
    assert code == 0
    assert "matched 2, deleted 2 things" in out


def test_ctrl_c_in_bulk_provision_keeps_what_was_done_and_a_re_run_continues(
    deployment: Deployment,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _bulk.BulkRun._provision_device

    def interrupted(run: _bulk.BulkRun, client: Any, name: str) -> None:
        if name == "cc-3":
            raise KeyboardInterrupt
        real(run, client, name)

    monkeypatch.setattr(_bulk.BulkRun, "_provision_device", interrupted)
    capsys.readouterr()
    code = main(["tools", "bulk-provision", "cc-", "5", "--out-dir", str(tmp_path), "--workers",
                 "1", "--local", str(deployment.state)])  # fmt: skip
    err = _errors(capsys.readouterr().err)
    assert code == 130
    # (the worker may start cc-4 before the main thread sees cc-3's interruption)
    assert re.search(r"iotdr: interrupted: [34] of 5 devices provisioned", err)
    run = next(tmp_path.glob("cc--*"))
    assert json.loads((run / "results.json").read_text())["status"] == "in_progress"
    monkeypatch.setattr(_bulk.BulkRun, "_provision_device", real)
    code, out, err = tools(capsys, deployment, "bulk-provision", "cc-", "5", "--out-dir",
                           str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["directory"], summary["resumed"], summary["provisioned"]) == (str(run), True, 5)
