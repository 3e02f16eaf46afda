"""The ``iotdr replicator`` commands' errors, the IAM policy, and the feed's journaling."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_agent.cli import main
from replicator.aws._iam import PolicyRequest, policy_document
from replicator.core import _ops
from replicator.runtime._feed import journal_message
from replicator.runtime._journal import Journal

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
EAST, WEST = "us-east-1", "us-west-2"


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IOTDR_PRIMARY_REGION", "IOTDR_SECONDARY_REGION", "IOTDR_REPLICATOR_FEED"):
        monkeypatch.delenv(name, raising=False)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_same_region_twice_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["replicator", "reconcile", "--primary-region", EAST, "--secondary-region", EAST], capsys
    )
    assert code == 2
    assert err.strip() == "iotdr: error: the primary and the secondary region must differ"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quota", "CreateThing=fast"], "is not API=TPS"),
        (["--quota", "CreateThing=0"], "is not API=TPS"),
        (["--mode", "partial"], "'partial' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replicator", "reconcile", "--primary-region", EAST, "--secondary-region", WEST]
    code, _, err = run([*args, *extra], capsys)
    assert code == 2
    assert message in err


def test_a_bad_feed_address_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replicator", "run", "--primary-region", EAST, "--secondary-region", WEST]
    code, _, err = run([*args, "--feed", "no-port", "--journal", str(tmp_path / "j.db")], capsys)
    assert code == 2
    assert "is not HOST:PORT" in err
    assert "Traceback" not in err


JITR_READS = frozenset(
    {"certificate_status", "read_ca_certificate", "list_ca_certificates", "list_certificates_by_ca"}
)


def _called_apis() -> set[str]:
    """Every API name the adapter passes to its call wrappers, and every operation's."""
    names = set()
    for module in ("_adapter.py", "_calls.py", "_writes.py"):
        tree = ast.parse((ROOT / "replicator" / "aws" / module).read_text())
        for function in ast.walk(tree):  # the CA reads are the JITR handler's (its own policy)
            if isinstance(function, ast.FunctionDef) and function.name in JITR_READS:
                function.body = []
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("call", "read", "pages", "gone_ok")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(str(node.args[0].value))
    assert len(names) > 20
    ops = {getattr(_ops, name).api for name in _ops.__all__ if hasattr(getattr(_ops, name), "api")}
    return names | {op for op in ops if op}


def test_the_iam_policy_allows_every_api_the_replicator_calls() -> None:
    document = policy_document(
        PolicyRequest(primary_region=EAST, secondary_region=WEST, account_id="123456789012")
    )
    primary, secondary = document["Statement"][0], document["Statement"][1]
    assert primary["Resource"] == f"arn:aws:iot:{EAST}:123456789012:*"
    allowed = set(secondary["Action"])
    missing = {f"iot:{api}" for api in _called_apis()} - allowed
    assert not missing
    assert not {a for a in primary["Action"] if "Create" in a or "Delete" in a or "Update" in a}


def test_iam_policy_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replicator", "iam-policy", "--primary-region", EAST, "--secondary-region", WEST]
    code, out, _ = run(args, capsys)
    assert code == 0
    assert json.loads(out)["Statement"][2]["Action"] == "iot:Connect"


@pytest.fixture
def journal() -> Iterator[Journal]:
    with Journal(":memory:") as opened:
        yield opened


def test_journal_message_outcomes(journal: Journal) -> None:
    assert journal_message(journal, "$aws/events/thing/t/created", b"{}", EAST, 1.0) == "accepted"
    assert (
        journal_message(journal, "$aws/events/presence/connected/c", b"{}", EAST, 1.0) == "ignored"
    )
    assert journal_message(journal, "$aws/events/thing/t/created", b"{", EAST, 1.0) == "dead_letter"


def test_the_failback_iam_policy_writes_the_primary_and_reads_the_secondarys_feed() -> None:
    request = PolicyRequest(primary_region=EAST, secondary_region=WEST, account_id="123456789012")
    document = policy_document(replace(request, failback=True))
    statements = {s["Sid"]: s for s in document["Statement"]}
    assert "iot:CreateThing" in statements["ReadAndWriteThePrimary"]["Action"]
    assert statements["ConnectTheFailbackFeed"]["Resource"] == (
        f"arn:aws:iot:{WEST}:123456789012:client/iotdr-replicator"
    )
    plain = {s["Sid"] for s in policy_document(replace(request, account_id="*"))["Statement"]}
    assert "ConnectTheFailbackFeed" not in plain


def test_the_jitr_iam_policy_allows_every_api_the_handler_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    called = set()
    modules = ("runtime/_jitr.py", "core/_jitr_plan.py")
    nodes = [ast.walk(ast.parse((ROOT / "replicator" / m).read_text())) for m in modules]
    # the adapter's CA reads (RegionApi's, for the handler): every call they make
    adapter = ast.parse((ROOT / "replicator" / "aws" / "_adapter.py").read_text())
    nodes += [
        ast.walk(node)
        for node in ast.walk(adapter)
        if isinstance(node, ast.FunctionDef) and node.name in JITR_READS
    ]
    for node in (n for walk in nodes for n in walk):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("read", "pages", "call")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            called.add(str(node.args[0].value))
        if isinstance(func, ast.Name) and hasattr(_ops, func.id):
            api = getattr(getattr(_ops, func.id), "api", "")
            called |= {api} if api else set()
    # the adapter's reads the handler uses: certificates with their things, things, policies
    called |= {"DescribeCertificate", "ListAttachedPolicies", "ListPrincipalThings"}
    called |= {"DescribeThing", "ListThingGroupsForThing", "GetPolicy", "ListPolicyVersions"}
    assert {"UpdateCertificate", "AttachThingPrincipal", "DescribeCACertificate"} <= called
    args = ["replicator", "iam-policy", "--jitr", "--secondary-region", WEST]
    code, out, _ = run(args, capsys)
    assert code == 0
    [activate, *_] = json.loads(out)["Statement"]
    assert activate["Resource"] == f"arn:aws:iot:{WEST}:*:*"
    assert not {f"iot:{api}" for api in called} - set(activate["Action"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--direction", "secondary-to-primary"], "--direction secondary-to-primary needs"),
        (["--keep-target-changes"], "--keep-target-changes needs the service's --journal"),
    ],
)
def test_failback_and_keeping_target_changes_need_the_journal(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replicator", "reconcile", "--primary-region", EAST, "--secondary-region", WEST]
    code, _, err = run([*args, *extra, "--dry-run"], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_the_jitr_iam_policy_can_check_the_primary(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replicator", "iam-policy", "--jitr", "--secondary-region", WEST]
    code, out, _ = run([*args, "--primary-region", EAST], capsys)
    assert code == 0
    statements = {s["Sid"]: s for s in json.loads(out)["Statement"]}
    assert statements["CheckThePrimary"]["Action"] in (
        "iot:DescribeCertificate",
        ["iot:DescribeCertificate"],
    )


def test_run_without_credentials_stops_at_startup_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    args = ["replicator", "run", "--primary-region", EAST, "--secondary-region", WEST]
    args += ["--primary-endpoint-url", "http://127.0.0.1:9", "--listen", "off"]
    args += ["--secondary-endpoint-url", "http://127.0.0.1:9", "--feed", "127.0.0.1:9"]
    code, _, err = run([*args, "--journal", str(tmp_path / "j.db")], capsys)
    assert code == 2
    assert f"no AWS credentials for {EAST}" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-half")  # no secret key
    code, _, err = run([*args, "--journal", str(tmp_path / "j.db")], capsys)
    assert code == 2
    assert f"incomplete AWS credentials for {EAST}" in err
    assert len(err.strip().splitlines()) == 1
