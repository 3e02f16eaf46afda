"""The service's operations: config files, metrics, health and readiness, the HTTP endpoints,
the Lambda handler's partial batch responses (over in-memory regions).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device_agent.cli import main
from replicator._errors import (
    AccessDeniedError,
    ConfigError,
    JournalError,
    RegionUnavailableError,
)
from replicator.cli import replicator, replicator_reconcile, replicator_run
from replicator.core._ops import CreateThing, CreateThingType
from replicator.core._records import DeadLetter, ObjectNamed
from replicator.core._state import ObjectKey, ThingState
from replicator.lambda_handler import LambdaConfig, LambdaReplicator, fifo_failures
from replicator.runtime._engine import Engine, EngineConfig, Outcome
from replicator.runtime._feed import FeedCounters
from replicator.runtime._health import HealthSnapshot, ServiceHealth, liveness, readiness
from replicator.runtime._host import ServiceOps
from replicator.runtime._http import OpsServer, parse_listen
from replicator.runtime._journal import Journal
from replicator.runtime._metrics import LAG_BUCKETS_S, ReplicatorMetrics
from replicator.runtime._quotas import RetryPolicy
from simulators import InMemoryRegion

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from replicator._errors import ReplicatorError
    from replicator.core._records import Record

EAST, WEST = "us-east-1", "us-west-2"
T1 = ObjectKey.thing("t1")


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "IOTDR_PRIMARY_REGION",
        "IOTDR_SECONDARY_REGION",
        "IOTDR_REPLICATOR_FEED",
        "IOTDR_REPLICATOR_MODE",
        "IOTDR_REPLICATOR_CONFIG",
        "IOTDR_REPLICATOR_LISTEN",
        "IOTDR_REPLICATOR_JOURNAL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def journal() -> Iterator[Journal]:
    with Journal(":memory:") as opened:
        yield opened


# -- the config file ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "replicator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def resolved(command: Any, args: list[str]) -> dict[str, Any]:
    ctx = command.make_context(command.name, args)
    params: dict[str, Any] = ctx.params
    return params


def test_a_config_file_supplies_defaults_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'primary_region = "us-east-1"\n"secondary-region" = "us-west-2"\nworkers = 3\n'
        'thing_recheck = 2.5\ndry_run = true\nkind = ["thing", "shadow"]\n'
        'journal = "state/j.db"\n[quota]\nCreateThing = 5\n',
    )
    params = resolved(replicator_reconcile, ["--config", str(path)])
    assert (params["primary_region"], params["secondary_region"]) == (EAST, WEST)
    assert (params["workers"], params["thing_recheck_s"], params["dry_run"]) == (3, 2.5, True)
    assert params["kinds"] == ("thing", "shadow")
    assert params["quotas"] == {"CreateThing": 5.0}
    assert params["journal_path"] == tmp_path / "state" / "j.db"  # relative to the file
    assert params["mode"] == "complete"  # the default, where the file says nothing


def test_command_line_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'primary_region = "eu-west-1"\nsecondary_region = "eu-west-2"\n'
        'mode = "jitr"\nworkers = 4\n',
    )
    monkeypatch.setenv("IOTDR_SECONDARY_REGION", "ap-south-1")
    monkeypatch.setenv("IOTDR_REPLICATOR_MODE", "complete")
    params = resolved(replicator_reconcile, ["--config", str(path), "--workers", "5"])
    assert params["workers"] == 5  # command line over file
    assert params["mode"] == "complete"  # environment over file
    assert params["secondary_region"] == "ap-south-1"  # environment over file
    assert params["primary_region"] == "eu-west-1"  # file over nothing
    assert params["thing_recheck_s"] == 30.0  # default


def test_the_config_file_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'primary_region = "us-east-1"\nsecondary_region = "us-west-2"\nfeed = "h:1"\n'
        'journal = "j.db"\nlisten = "off"\n',
    )
    monkeypatch.setenv("IOTDR_REPLICATOR_CONFIG", str(path))
    params = resolved(replicator_run, [])
    assert (params["feed"], params["listen"]) == ("h:1", "off")
    assert params["journal_path"] == tmp_path / "j.db"


SHARED = (
    'primary_region = "us-east-1"\nsecondary_region = "us-west-2"\njournal = "j.db"\n'
    'feed = "h:1"\nlisten = "off"\nfailback = "auto"\nfailback-feed = "h:2"\n'  # run's
    'dry_run = true\nkind = ["thing"]\n'  # reconcile's
)


def test_one_config_file_serves_run_and_reconcile_on_their_own(tmp_path: Path) -> None:
    path = write(tmp_path, SHARED)
    reconcile = resolved(replicator_reconcile, ["--config", str(path)])
    assert (reconcile["dry_run"], reconcile["kinds"]) == (True, ("thing",))
    assert "feed" not in reconcile
    run = resolved(replicator_run, ["--config", str(path)])
    assert (run["feed"], run["failback"], run["failback_feed"]) == ("h:1", "auto", "h:2")
    assert "dry_run" not in run
    assert reconcile["journal_path"] == run["journal_path"] == tmp_path / "j.db"


@pytest.mark.parametrize("name", ["run", "reconcile"])
def test_one_config_file_serves_run_and_reconcile_under_their_group(
    tmp_path: Path, name: str
) -> None:
    path = write(tmp_path, SHARED)
    with replicator.make_context("replicator", [name]) as group:
        ctx = replicator.commands[name].make_context(name, ["--config", str(path)], parent=group)
    assert ctx.params["primary_region"] == EAST
    assert ("feed" in ctx.params) == (name == "run")


@pytest.mark.parametrize("name", ["run", "reconcile"])
def test_a_key_no_command_knows_still_fails_with_a_shared_file(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SHARED + "feeds = 1\n")
    code = main(["replicator", name, "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"iotdr: error: config {path}: unknown key 'feeds' (known: ")
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers = = 3\n", "not TOML"),
        ("bogus = 1\n", "unknown key 'bogus'"),
        ('workers = "8"\n', "key 'workers': expected an integer, not str"),
        ("workers = 999\n", "key 'workers'"),
        ("dry_run = 1\n", "key 'dry_run': expected true or false"),
        ('mode = "partial"\n', "key 'mode'"),
        ('kind = "thing"\n', "key 'kind': expected a list"),
        ('quota = "CreateThing=5"\n', "key 'quota': expected a table"),
        ("[quota]\nCreateThing = 0\n", "key 'quota.CreateThing'"),
        ("[quota]\nCreateThing = true\n", "key 'quota.CreateThing'"),
        ("workers = true\n", "key 'workers'"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    code = main(["replicator", "reconcile", "--config", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"config {path}" in err
    assert message in err


def test_a_missing_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.toml"
    code = main(["replicator", "run", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"iotdr: error: config {path}: cannot read it: No such file or directory"


def test_a_bad_listen_address_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replicator", "run", "--primary-region", EAST, "--secondary-region", WEST]
    args += ["--feed", "127.0.0.1:1883", "--journal", str(tmp_path / "j.db"), "--listen", "nope"]
    assert main(args) == 2
    assert "--listen 'nope' is not HOST:PORT or 'off'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9464", "host:", "host:port", "host:70000", ""])
def test_bad_listen_addresses(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


# -- health and readiness -----------------------------------------------------------------------


@dataclass
class FakeFeed:
    counters: FeedCounters = field(default_factory=FeedCounters)
    subscribed: bool = False
    failed: ReplicatorError | None = None


def snapshot(**changes: Any) -> HealthSnapshot:
    fields: dict[str, Any] = {"engine": "running", "feed_subscribed": True} | changes
    return HealthSnapshot(**fields)


@pytest.mark.parametrize(
    ("changes", "live", "ready", "reason"),
    [
        ({}, True, True, "ok"),
        ({"feed_subscribed": None}, True, True, "ok"),  # no feed: the Lambda path
        ({"engine": "starting"}, True, False, "starting"),
        ({"engine": "stopped"}, False, False, "the engine loop has stopped"),
        ({"engine": "stopped", "engine_error": "AccessDeniedError: x"}, False, False, "x"),
        ({"journal_error": "journal j: closed"}, False, False, "the journal does not answer"),
        ({"stopping": True}, True, False, "shutting down"),
        ({"feed_subscribed": False}, True, False, "the feed is not connected"),
        ({"feed_error": "journal j: disk"}, True, False, "the feed failed"),
        ({"unavailable_streak": 2}, True, True, "ok"),
        ({"unavailable_streak": 3}, True, False, "a region is unreachable"),
    ],
)
def test_liveness_and_readiness_verdicts(
    changes: dict[str, Any], live: bool, ready: bool, reason: str
) -> None:
    state = snapshot(**changes)
    assert liveness(state).ok is live
    verdict = readiness(state)
    assert verdict.ok is ready
    assert reason in verdict.reason
    assert "\n" not in verdict.reason


def outcome(result: str, key: ObjectKey = T1, lag_s: float | None = None) -> Outcome:
    return Outcome(key, result, lag_s, ())


def test_service_health_follows_the_service_through_its_life(journal: Journal) -> None:
    feed = FakeFeed()
    health = ServiceHealth(unavailable_after=2)
    health.watch(journal_probe=lambda: journal.counts(0.0), feed=feed)
    assert health.liveness().ok
    assert health.readiness().reason == "the feed is not connected and subscribed"
    feed.subscribed = True
    assert health.readiness().reason == "the engine loop is starting"
    health.engine_running()
    assert health.readiness().ok
    health.observe(outcome("unavailable"))
    assert health.readiness().ok  # one may pass
    health.observe(outcome("unavailable"))
    assert not health.readiness().ok
    health.observe(outcome("throttled"))  # the region answered
    assert health.readiness().ok
    health.stopping()
    assert (health.liveness().ok, health.readiness().reason) == (True, "shutting down")
    health.engine_stopped()
    assert not health.liveness().ok


def test_a_closed_journal_fails_liveness(journal: Journal) -> None:
    health = ServiceHealth()
    health.watch(journal_probe=lambda: journal.counts(0.0))
    health.engine_running()
    assert health.readiness().ok
    journal.close()
    verdict = health.liveness()
    assert not verdict.ok
    assert "closed" in verdict.reason


# -- metrics ------------------------------------------------------------------------------------


def scrape(metrics: ReplicatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_exposition(journal: Journal) -> None:
    journal.accept(ObjectNamed(region=EAST, key=T1), now=100.0)
    journal.accept(ObjectNamed(region=EAST, key=ObjectKey.thing("t2")), now=130.0)
    journal.dead_letter(DeadLetter("t", "p", "bad"), now=100.0)
    feed = FakeFeed(FeedCounters(received=5, accepted=3, ignored=1, dead_letters=1, connects=2))
    feed.subscribed = True
    metrics = ReplicatorMetrics()
    health = ServiceHealth()
    health.engine_running()
    metrics.watch(journal=journal, now=lambda: 160.0, feed=feed, health=health)
    metrics.observe(Outcome(T1, "done", 0.3, ("CreateThing", "UpdateThing")))
    metrics.observe(Outcome(T1, "done", 7.0, ("UpdateThing",)))
    metrics.observe(outcome("throttled"))
    metrics.observe(outcome("dead", ObjectKey.policy("p")))

    samples = scrape(metrics)
    assert samples["iotdr_replicator_changes_total", (("kind", "thing"), ("result", "done"))] == 2
    assert samples["iotdr_replicator_changes_total", (("kind", "thing"), ("result", "throttled"))]
    assert samples["iotdr_replicator_changes_total", (("kind", "policy"), ("result", "dead"))] == 1
    # every series exists from the start
    assert samples["iotdr_replicator_changes_total", (("kind", "shadow"), ("result", "retry"))] == 0
    assert samples["iotdr_replicator_writes_total", (("api", "UpdateThing"),)] == 2
    assert samples["iotdr_replicator_writes_total", (("api", "CreateThing"),)] == 1
    assert samples["iotdr_replicator_lag_seconds_count", (("kind", "thing"),)] == 2
    assert samples["iotdr_replicator_lag_seconds_sum", (("kind", "thing"),)] == pytest.approx(7.3)
    assert samples["iotdr_replicator_lag_seconds_bucket", (("kind", "thing"), ("le", "0.5"))] == 1
    assert samples["iotdr_replicator_lag_seconds_bucket", (("kind", "thing"), ("le", "+Inf"))] == 2
    buckets = {
        float(labels[1][1])
        for name, labels in samples
        if name == "iotdr_replicator_lag_seconds_bucket" and labels[0] == ("kind", "thing")
    }
    assert {min(LAG_BUCKETS_S), max(LAG_BUCKETS_S)} <= buckets
    assert samples["iotdr_replicator_queue_pending", ()] == 2
    assert samples["iotdr_replicator_queue_due", ()] == 2
    assert samples["iotdr_replicator_queue_dead", ()] == 0
    assert samples["iotdr_replicator_queue_oldest_pending_seconds", ()] == 60.0
    assert samples["iotdr_replicator_dead_letters", ()] == 1
    assert samples["iotdr_replicator_journal_up", ()] == 1
    assert samples["iotdr_replicator_feed_messages_total", (("outcome", "accepted"),)] == 3
    assert samples["iotdr_replicator_feed_messages_total", (("outcome", "dead_letter"),)] == 1
    assert samples["iotdr_replicator_feed_connects_total", ()] == 2
    assert samples["iotdr_replicator_feed_subscribed", ()] == 1
    assert samples["iotdr_replicator_ready", ()] == 1


def test_two_services_in_one_process_do_not_share_counters() -> None:
    first, second = ReplicatorMetrics(), ReplicatorMetrics()
    first.observe(outcome("done", lag_s=1.0))
    key = ("iotdr_replicator_changes_total", (("kind", "thing"), ("result", "done")))
    assert scrape(first)[key] == 1
    assert scrape(second)[key] == 0


def test_a_scrape_survives_a_closed_journal(journal: Journal) -> None:
    metrics = ReplicatorMetrics()
    metrics.watch(journal=journal, now=lambda: 0.0)
    journal.close()
    samples = scrape(metrics)
    assert samples["iotdr_replicator_journal_up", ()] == 0
    assert ("iotdr_replicator_queue_pending", ()) not in samples


def test_service_ops_feeds_metrics_and_health_from_one_observer() -> None:
    ops = ServiceOps(unavailable_after=1)
    ops.health.engine_running()
    ops.observe(outcome("unavailable"))
    assert not ops.health.readiness().ok
    key = ("iotdr_replicator_changes_total", (("kind", "thing"), ("result", "unavailable")))
    assert scrape(ops.metrics)[key] == 1


# -- the HTTP endpoints -------------------------------------------------------------------------


def get(url: str, *, accept: str | None = None) -> tuple[int, str, str]:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_endpoints_answer_and_follow_the_health(journal: Journal) -> None:
    feed = FakeFeed(subscribed=True)
    ops = ServiceOps()
    ops.health.watch(journal_probe=lambda: journal.counts(0.0), feed=feed)
    ops.metrics.watch(journal=journal, now=lambda: 0.0, feed=feed, health=ops.health)
    with OpsServer("127.0.0.1", 0, health=ops.health, metrics=ops.metrics) as server:
        base = server.url
        assert get(f"{base}/healthz")[::2] == (200, "ok\n")
        assert get(f"{base}/readyz")[::2] == (503, "the engine loop is starting\n")
        ops.health.engine_running()
        assert get(f"{base}/readyz")[::2] == (200, "ok\n")
        feed.subscribed = False
        status, content_type, body = get(f"{base}/readyz", accept="application/json")
        assert (status, content_type) == (503, "application/json")
        assert json.loads(body) == {
            "ok": False,
            "reason": "the feed is not connected and subscribed",
        }
        assert json.loads(get(f"{base}/readyz?format=json")[2])["ok"] is False
        status, content_type, body = get(f"{base}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(body)}
        assert {"iotdr_replicator_changes", "iotdr_replicator_queue_pending"} <= names
        assert get(f"{base}/other")[0] == 404
        journal.close()
        status, _, body = get(f"{base}/healthz")
        assert status == 503
        assert body.startswith("the journal does not answer")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_a_port_in_use_is_a_config_error() -> None:
    ops = ServiceOps()
    with OpsServer("127.0.0.1", 0, health=ops.health, metrics=ops.metrics) as first:
        port = first.address[1]
        with pytest.raises(ConfigError, match=f"--listen 127.0.0.1:{port}"):
            OpsServer("127.0.0.1", port, health=ops.health, metrics=ops.metrics)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_listen_address_binds_and_answers() -> None:
    ops = ServiceOps()
    ops.health.engine_running()
    host, port = parse_listen("[::1]:0") or ("", 0)
    with OpsServer(host, port, health=ops.health, metrics=ops.metrics) as server:
        assert server.address[0] == "::1"
        assert server.address[1] > 0
        assert server.url == f"http://[::1]:{server.address[1]}"
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            assert response.status == 200


# -- the Lambda handler -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "failed", "reported"),
    [
        ([("a", "g1"), ("b", "g1"), ("c", "g2")], set(), []),
        # FIFO, AWS's rule: the first failure and every later message, whatever its group.
        ([("a", "g1"), ("b", "g1"), ("c", "g2")], {"a"}, ["a", "b", "c"]),
        ([("a", "g1"), ("b", "g2"), ("c", "g1"), ("d", "g2")], {"b"}, ["b", "c", "d"]),
        ([("a", "g1"), ("b", "g1"), ("c", "g1")], {"b"}, ["b", "c"]),  # earlier ones stand
        ([("a", "g1"), ("b", "g2"), ("c", "g1")], {"a", "b"}, ["a", "b", "c"]),
        ([("a", "g1"), ("b", "g2"), ("c", "g3")], {"c"}, ["c"]),  # the last one only
        ([], set(), []),
        # A standard queue (no groups): the failed ones only.
        ([("a", None), ("b", None), ("c", None)], {"a", "c"}, ["a", "c"]),
        ([("a", None), ("b", None)], set(), []),
    ],
)
def test_fifo_partial_batch_rule(
    messages: list[tuple[str, str | None]], failed: set[str], reported: list[str]
) -> None:
    assert fifo_failures(messages, failed) == reported


@dataclass
class PartlyDown(InMemoryRegion):
    """A region whose reads of some things fail as if it were down."""

    down: set[str] = field(default_factory=set)
    denied: bool = False

    def read_thing(self, name: str, *, principals: bool) -> ThingState | None:
        if self.denied:
            raise AccessDeniedError(region=self.region, api="DescribeThing")
        if name in self.down:
            raise RegionUnavailableError("connection refused", region=self.region)
        return super().read_thing(name, principals=principals)


def sqs_record(message_id: str, thing: str | None, group: str) -> dict[str, Any]:
    body = (
        json.dumps({"topic": f"$aws/events/thing/{thing}/updated", "payload": {}})
        if thing is not None
        else "{not json"
    )
    return {"messageId": message_id, "body": body, "attributes": {"MessageGroupId": group}}


@pytest.fixture
def lambda_rig() -> Iterator[tuple[LambdaReplicator, InMemoryRegion, PartlyDown]]:
    primary, secondary = InMemoryRegion(EAST), PartlyDown(WEST)
    for name in ("a1", "a2", "b1"):
        primary.execute(CreateThing(name, attributes={"n": name}))
    engine = Engine(
        source=primary,
        target=secondary,
        journal=Journal(":memory:"),
        config=EngineConfig(
            workers=2,
            thing_recheck_s=None,
            backoff=RetryPolicy(max_attempts=100, base_s=0.001, cap_s=0.001),
        ),
    )
    with LambdaReplicator(engine, workers=2) as replicator:
        yield replicator, primary, secondary


def test_lambda_reports_the_batch_from_its_first_failure_on_a_fifo_queue(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
) -> None:
    replicator, _, secondary = lambda_rig
    secondary.down = {"a2"}
    event = {
        "Records": [
            sqs_record("m1", "a1", "A"),
            sqs_record("m2", "b1", "B"),
            sqs_record("m3", "a2", "A"),  # fails
            sqs_record("m4", "a1", "A"),  # after it in its group: reported
            sqs_record("m5", "b1", "B"),  # after it in another group: reported too (AWS's rule)
        ]
    }
    response = replicator.handle(event)
    assert [item["itemIdentifier"] for item in response["batchItemFailures"]] == [
        "m3",
        "m4",
        "m5",
    ]
    assert set(secondary.things) == {"a1", "b1"}  # m1 and m2, before the failure, stand

    secondary.down = set()  # SQS delivers m3, m4 and m5 again
    again = {"Records": event["Records"][2:]}
    assert replicator.handle(again) == {"batchItemFailures": []}
    assert set(secondary.things) == {"a1", "a2", "b1"}


def test_lambda_does_not_report_a_malformed_message_before_the_first_failure(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
) -> None:
    replicator, _, secondary = lambda_rig
    secondary.down = {"a2"}
    event = {
        "Records": [
            sqs_record("m1", None, "B"),  # malformed: dead-lettered, not reported
            sqs_record("m2", "a2", "A"),  # fails
            sqs_record("m3", None, "C"),  # malformed, but after the failure: reported
        ]
    }
    response = replicator.handle(event)
    assert [item["itemIdentifier"] for item in response["batchItemFailures"]] == ["m2", "m3"]
    assert replicator.engine.journal.counts(0.0).dead_letters == 2


def test_lambda_reports_only_the_failed_messages_of_a_standard_queue(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
) -> None:
    replicator, _, secondary = lambda_rig
    secondary.down = {"a2"}
    records = [sqs_record(m, thing, "") for m, thing in (("m1", "a2"), ("m2", "a1"), ("m3", "b1"))]
    for record in records:
        del record["attributes"]["MessageGroupId"]
    response = replicator.handle({"Records": records})
    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert set(secondary.things) == {"a1", "b1"}


def test_lambda_reports_a_scheduled_step_until_it_is_due_sqs_being_the_timer() -> None:
    """A thing type deleted in the primary: deprecated now, deleted 300 s later.

    The message is reported at every delivery until then (see the module
    docstring for the queue settings this needs), then applied.
    """
    clock = [1_700_000_000.0]
    primary = InMemoryRegion(EAST, clock=lambda: clock[0])
    secondary = InMemoryRegion(WEST, clock=lambda: clock[0])
    secondary.execute(CreateThingType("sensor"))
    engine = Engine(
        source=primary,
        target=secondary,
        journal=Journal(":memory:"),
        config=EngineConfig(workers=1, thing_recheck_s=None),
        wall=lambda: clock[0],
    )
    body = json.dumps(
        {
            "topic": "$aws/events/thingType/sensor/deleted",
            "payload": {"operation": "DELETED", "thingTypeName": "sensor"},
        }
    )
    event = {"Records": [{"messageId": "t1", "body": body, "attributes": {}}]}
    with LambdaReplicator(engine, workers=1) as replicator:
        assert replicator.handle(event) == {"batchItemFailures": [{"itemIdentifier": "t1"}]}
        assert secondary.types["sensor"].deprecated
        clock[0] += 120.0  # SQS delivers it again before the deletion is due
        assert replicator.handle(event) == {"batchItemFailures": [{"itemIdentifier": "t1"}]}
        assert "sensor" in secondary.types
        clock[0] += 300.0 - 120.0 + 5.0
        assert replicator.handle(event) == {"batchItemFailures": []}
        assert "sensor" not in secondary.types


def test_lambda_reports_nothing_for_ignored_or_unparseable_messages(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
) -> None:
    replicator, _, secondary = lambda_rig
    presence = json.dumps({"topic": "$aws/events/presence/connected/c1", "payload": {}})
    event = {
        "Records": [
            {"messageId": "m1", "body": presence, "attributes": {"MessageGroupId": "c1"}},
            {"messageId": "m2", "body": "", "attributes": {}},
            {"body": "no id: cannot be reported"},
        ]
    }
    assert replicator.handle(event) == {"batchItemFailures": []}
    assert secondary.things == {}


def test_lambda_journals_a_batch_applies_it_and_dead_letters_bad_bodies(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
) -> None:
    replicator, _, secondary = lambda_rig
    created = {"topic": "$aws/events/thing/a1/created", "payload": {"operation": "CREATED"}}
    presence = {"topic": "$aws/events/presence/connected/c", "payload": {}}
    event = {
        "Records": [
            {"messageId": "m1", "body": json.dumps(created)},
            {"messageId": "m2", "body": json.dumps(presence)},
            {"messageId": "m3", "body": "not json"},
        ]
    }
    assert replicator.handle(event) == {"batchItemFailures": []}
    assert set(secondary.things) == {"a1"}
    counts = replicator.engine.journal.counts(0.0)
    assert (counts.done, counts.pending, counts.dead_letters) == (1, 0, 1)


class RefusingJournal(Journal):
    """A journal whose commits of new changes fail (a full disk, say)."""

    def accept(
        self, record: Record, *, now: float, not_before: float | None = None
    ) -> list[ObjectKey]:
        raise JournalError(self.path, "disk I/O error")


def test_lambda_reports_a_message_the_journal_could_not_commit_for_redelivery() -> None:
    engine = Engine(
        source=InMemoryRegion(EAST),
        target=InMemoryRegion(WEST),
        journal=RefusingJournal(":memory:"),
    )
    body = json.dumps({"topic": "$aws/events/thing/t1/created", "payload": {}})
    with LambdaReplicator(engine, workers=1) as replicator:
        response = replicator.handle({"Records": [{"messageId": "m1", "body": body}]})
    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


def test_lambda_raises_access_denied_so_the_whole_batch_comes_back(
    lambda_rig: tuple[LambdaReplicator, InMemoryRegion, PartlyDown],
    caplog: pytest.LogCaptureFixture,
) -> None:
    replicator, _, secondary = lambda_rig
    secondary.denied = True
    with pytest.raises(AccessDeniedError, match="iot:DescribeThing"):
        replicator.handle({"Records": [sqs_record("m1", "a1", "A")]})
    [denied] = [r for r in caplog.records if r.getMessage() == "replicator.lambda.denied"]
    assert denied.__dict__["permission"] == "iot:DescribeThing"
    secondary.denied = False  # fixed: SQS delivers the batch again
    assert replicator.handle({"Records": [sqs_record("m1", "a1", "A")]}) == {
        "batchItemFailures": []
    }


def test_lambda_configuration_from_the_environment() -> None:
    config = LambdaConfig.from_environ(
        {
            "IOTDR_PRIMARY_REGION": EAST,
            "IOTDR_SECONDARY_REGION": WEST,
            "IOTDR_REPLICATOR_MODE": "jitr",
            "IOTDR_PRIMARY_ENDPOINT_URL": "http://127.0.0.1:1",
            "IOTDR_REPLICATOR_JOURNAL": "/tmp/iotdr.db",
        }
    )
    assert (config.primary_region, config.mode, config.journal) == (EAST, "jitr", "/tmp/iotdr.db")
    assert config.primary_endpoint_url == "http://127.0.0.1:1"
    assert config.secondary_endpoint_url is None
    with pytest.raises(ConfigError, match="IOTDR_SECONDARY_REGION is not set"):
        LambdaConfig.from_environ({"IOTDR_PRIMARY_REGION": EAST})
    with pytest.raises(ConfigError, match="must differ"):
        LambdaConfig.from_environ({"IOTDR_PRIMARY_REGION": EAST, "IOTDR_SECONDARY_REGION": EAST})


def test_the_failback_engines_outcomes_and_queue_have_their_own_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from replicator.core._records import ObjectNamed
    from replicator.core._state import ObjectKey
    from replicator.runtime._engine import Outcome
    from replicator.runtime._journal import Journal
    from replicator.runtime._metrics import ReplicatorMetrics

    metrics = ReplicatorMetrics()
    key = ObjectKey.thing("t1")
    metrics.observe(Outcome(key, "done", 1.0, ("CreateThing",)))
    metrics.observe(Outcome(key, "unavailable", None, (), "us-east-1", "failback"))
    with Journal(":memory:") as journal, Journal(":memory:", queue="failback") as back:
        back.accept(ObjectNamed(region="us-west-2", key=key), now=0.0)
        metrics.watch(journal=journal, now=lambda: 1.0, failback_journal=back)
        text = metrics.exposition().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    done = (("kind", "thing"), ("result", "done"))
    unavailable = (("kind", "thing"), ("result", "unavailable"))
    assert samples["iotdr_replicator_changes_total", done] == 1
    assert samples["iotdr_replicator_changes_total", unavailable] == 0
    assert samples["iotdr_replicator_failback_changes_total", unavailable] == 1
    assert samples["iotdr_replicator_queue_pending", ()] == 0
    assert samples["iotdr_replicator_failback_queue_pending", ()] == 1
