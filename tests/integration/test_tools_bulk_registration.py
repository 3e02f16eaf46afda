"""``iotdr tools bulk-provision`` through bulk registration (StartThingRegistrationTask), locally.

One ``iotdr sim regions up`` for the module (no replicator: nothing here is
compared across regions). The local control plane runs the registration
task over moto, reading the input file from its own S3; the tool writes the
same ``results.json`` as with parallel calls.
"""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from device_agent.cli import main
from replicator.tools import _bulk
from tests.integration.test_tools import EAST, _errors, _regions_up

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

BUCKET = "iotdr-bulk-test"
PARALLEL_KEYS = {"thingName", "certificateId", "certificateArn", "certificatePem", "privateKey"}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state = tmp_path_factory.mktemp("bulkreg")
    process, endpoints = _regions_up(state)
    try:
        yield state, endpoints
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _iot(endpoints: dict[str, Any]) -> Any:
    url = endpoints["control_plane_url"]
    assert url.startswith("http://127.0.0.1:")
    return boto3.client("iot", region_name=EAST, endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["tools", "bulk-provision", *args, "--local", str(state)])
    out, err = capsys.readouterr()
    return code, out, _errors(err)


def _tasks(iot: Any) -> list[str]:
    return list(iot.list_thing_registration_tasks()["taskIds"])


def test_bulk_registration_registers_things_certificates_and_policy_admitted_by_the_door(
    local: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state, endpoints = local
    iot = _iot(endpoints)
    before = _tasks(iot)
    code, out, err = _run(capsys, state, "br-", "4", "--bucket", BUCKET, "--out-dir",
                          str(tmp_path), "--processes", "1", "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["provisioned"], summary["failed"], summary["method"]) == (
        4, 0, "bulk registration")  # fmt: skip
    assert len(_tasks(iot)) == len(before) + 1
    run = tmp_path / summary["directory"].rsplit("/", 1)[1]
    results = json.loads((run / "results.json").read_text())
    assert results["format"] == "iotdr-bulk-provision/1"
    assert results["status"] == "complete"
    assert "pendingTask" not in results
    assert [d["thingName"] for d in results["devices"]] == [f"br-{i}" for i in range(4)]
    for device in results["devices"]:
        assert set(device) == PARALLEL_KEYS
        assert (run / device["privateKey"]).stat().st_mode & 0o777 == 0o600
        found = iot.describe_certificate(certificateId=device["certificateId"])
        assert found["certificateDescription"]["status"] == "ACTIVE"
        assert found["certificateDescription"]["certificatePem"] == device["certificatePem"]
        principals = iot.list_thing_principals(thingName=device["thingName"])["principals"]
        assert principals == [device["certificateArn"]]
        policies = iot.list_attached_policies(target=device["certificateArn"])["policies"]
        assert [p["policyName"] for p in policies] == [results["policy"]]
    capsys.readouterr()
    assert main(["tools", "lookup", "br-0", "--region", EAST, "--json", "--local", str(state)]) == 0
    found = json.loads(capsys.readouterr().out)["regions"][EAST]
    assert found["admission"]["admitted"] is True


def test_a_bad_csr_is_reported_without_aborting_the_rest_and_a_re_run_finishes(
    local: tuple[Path, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, endpoints = local
    iot = _iot(endpoints)
    real = _bulk.BulkRun.generate_keys

    def spoil_one(run: _bulk.BulkRun, **kwargs: Any) -> int:
        made = real(run, **kwargs)
        (run.directory / "bad-1.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\nnot a CSR\n"
                                                 "-----END CERTIFICATE REQUEST-----\n")  # fmt: skip
        return made

    monkeypatch.setattr(_bulk.BulkRun, "generate_keys", spoil_one)
    code, out, err = _run(capsys, state, "bad-", "3", "--bucket", BUCKET, "--out-dir",
                          str(tmp_path), "--processes", "1", "--json")  # fmt: skip
    assert code == 1, err
    summary = json.loads(out)
    assert (summary["provisioned"], summary["failed"]) == (2, 1)
    [failure] = summary["failures"]
    assert failure["thingName"] == "bad-1"
    assert "bulk registration task" in failure["error"]
    assert "InvalidRequestException" in failure["error"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="bad-1")

    monkeypatch.setattr(_bulk.BulkRun, "generate_keys", real)
    run = tmp_path / summary["directory"].rsplit("/", 1)[1]
    (run / "bad-1.csr").unlink()  # a new key and CSR are made for it
    tasks = len(_tasks(iot))
    code, out, err = _run(capsys, state, "bad-", "3", "--bucket", BUCKET, "--out-dir",
                          str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    again = json.loads(out)
    assert (again["directory"], again["resumed"], again["provisioned"]) == (str(run), True, 3)
    assert len(_tasks(iot)) == tasks + 1
    for name in ("bad-0", "bad-1", "bad-2"):  # the first two are not registered again
        assert len(iot.list_thing_principals(thingName=name)["principals"]) == 1


def test_a_run_interrupted_after_starting_its_task_collects_it_instead_of_starting_another(
    local: tuple[Path, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, endpoints = local
    iot = _iot(endpoints)
    real = _bulk.BulkRun._collect_task

    def interrupted(run: _bulk.BulkRun, client: Any, task: Any, progress: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_bulk.BulkRun, "_collect_task", interrupted)
    code, _, err = _run(capsys, state, "res-", "3", "--bucket", BUCKET, "--out-dir",
                        str(tmp_path), "--processes", "1")  # fmt: skip
    assert code == 130
    assert "run the same command again to continue" in err
    run = next(tmp_path.glob("res--*"))
    saved = json.loads((run / "results.json").read_text())
    assert saved["pendingTask"]["names"] == ["res-0", "res-1", "res-2"]
    tasks = len(_tasks(iot))

    monkeypatch.setattr(_bulk.BulkRun, "_collect_task", real)
    code, out, err = _run(capsys, state, "res-", "3", "--bucket", BUCKET, "--out-dir",
                          str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["resumed"], summary["provisioned"]) == (True, 3)
    assert len(_tasks(iot)) == tasks  # collected, not started again
    assert "pendingTask" not in json.loads((run / "results.json").read_text())
    for i in range(3):
        assert len(iot.list_thing_principals(thingName=f"res-{i}")["principals"]) == 1


def test_off_uses_parallel_calls_and_on_without_a_bucket_is_one_line(
    local: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state, endpoints = local
    iot = _iot(endpoints)
    tasks = len(_tasks(iot))
    code, out, err = _run(capsys, state, "par-", "2", "--bulk-registration", "off", "--bucket",
                          BUCKET, "--out-dir", str(tmp_path), "--processes", "1",
                          "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["provisioned"], summary["method"]) == (2, "parallel calls")
    assert len(_tasks(iot)) == tasks
    run = tmp_path / summary["directory"].rsplit("/", 1)[1]
    devices = json.loads((run / "results.json").read_text())["devices"]
    assert all(set(d) == PARALLEL_KEYS for d in devices)

    code, out, err = _run(capsys, state, "on-", "1", "--bulk-registration", "on", "--out-dir",
                          str(tmp_path))  # fmt: skip
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "--bucket" in err
