"""A thing type's life replicated between the local regions, AWS's deletion rule included.

AWS deletes a thing type only once it has been deprecated for five minutes;
the local control plane enforces the same rule, here with a wait of
:data:`DELETE_AFTER_S` in both regions, and the engine is told the same wait.
The primary's registry events arrive over MQTT; the engine applies them
through boto3 to the secondary. When the type is deleted in the primary while
the secondary still has it undeprecated, the engine deprecates it there and
schedules the deletion in its journal (``not_before``) instead of sleeping;
the secondary refuses an early delete meanwhile. Every wait is a poll with a
deadline.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from replicator.aws._adapter import RegionConfig, build_region
from replicator.core._plan import _SCHEDULE_MARGIN_S
from replicator.core._state import ObjectKey
from replicator.runtime._engine import Engine, EngineConfig
from replicator.runtime._feed import FeedConfig
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaLimiter, RetryPolicy
from simulators._regions import LocalRegions
from tests.integration.test_replicator_live import ServiceThread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from mypy_boto3_iot import IoTClient

pytestmark = pytest.mark.integration

EAST, WEST = "us-east-1", "us-west-2"
DELETE_AFTER_S = 2.0
WAIT_S = 30.0
STAMP_S = 0.01  # the resolution of the control plane's timestamps, and then some
TYPE = "sensor"
KEY = ObjectKey.thing_type(TYPE)


@pytest.fixture
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegions]:
    """The local regions, deleting a thing type :data:`DELETE_AFTER_S` after its deprecation."""
    local = LocalRegions(
        state_dir=tmp_path_factory.mktemp("regions"),
        health=None,
        thing_type_delete_after_s=DELETE_AFTER_S,
    )
    with local:
        if local.broker(EAST).kind != "mosquitto":
            pytest.skip("registry events need mosquitto (amqtt refuses topics starting with '$')")
        yield local


def iot(regions: LocalRegions, region: str) -> IoTClient:
    assert regions.control_plane is not None
    return boto3.client(
        "iot",
        region_name=region,
        endpoint_url=regions.control_plane.url,
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout_s} s")


def error_code(call: Callable[[], object]) -> str | None:
    """The AWS error code ``call`` fails with, None if it succeeds."""
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        response: Any = exc.response
        return str(response["Error"]["Code"])
    return None


class Replicator(ServiceThread):
    """``run_service`` in a thread: the feed on the primary's broker, the engine, its journal."""

    def __init__(self, regions: LocalRegions, journal: Journal) -> None:
        assert regions.control_plane is not None
        url = regions.control_plane.url
        limiter = QuotaLimiter()
        engine = Engine(
            source=build_region(
                RegionConfig(
                    region=EAST, endpoint_url=url, data_endpoint_url=regions.shadows(EAST).url
                ),
                limiter=limiter,
            ),
            target=build_region(
                RegionConfig(
                    region=WEST, endpoint_url=url, data_endpoint_url=regions.shadows(WEST).url
                ),
                limiter=limiter,
            ),
            journal=journal,
            config=EngineConfig(
                thing_type_delete_after_s=DELETE_AFTER_S,
                thing_recheck_s=None,
                backoff=RetryPolicy(max_attempts=1_000_000, base_s=0.2, cap_s=0.5),
            ),
        )
        broker = regions.broker(EAST)
        feed = FeedConfig(
            region=EAST, host=broker.host, port=broker.port, client_id="iotdr-thing-types-test"
        )
        super().__init__(engine, feed)


def journal_row(journal: Journal, key: ObjectKey) -> tuple[str, float, str | None, float]:
    """The journal's row of ``key``, read as a reader would.

    State, not_before (epoch s), reason, updated_at (epoch s).
    """
    with sqlite3.connect(f"file:{journal.path}?mode=ro", uri=True) as conn:
        state, not_before, reason, updated_at = conn.execute(
            f"SELECT state, not_before, reason, updated_at FROM {journal.queue} WHERE key = ?",
            (str(key),),
        ).fetchone()
    return str(state), float(not_before), reason, float(updated_at)


def scheduled_row(journal: Journal) -> tuple[str, float, str, float] | None:
    """The type's row while it holds a schedule (a reason and a not_before ahead), else None."""
    state, not_before, reason, updated_at = journal_row(journal, KEY)
    if state != "pending" or reason is None or not_before <= updated_at:
        return None
    return state, not_before, str(reason), updated_at


def delete_when_allowed(client: IoTClient, *, timeout_s: float) -> list[str]:
    """Delete the type, asking again until the region allows it; the refusals on the way."""
    deadline = time.monotonic() + timeout_s
    refusals: list[str] = []
    while (code := error_code(lambda: client.delete_thing_type(thingTypeName=TYPE))) is not None:
        refusals.append(code)
        if time.monotonic() >= deadline:
            pytest.fail(f"the type was not deleted within {timeout_s} s: {refusals[-1]}")
        time.sleep(0.1)
    return refusals


def deprecated(client: IoTClient) -> bool:
    return bool(client.describe_thing_type(thingTypeName=TYPE)["thingTypeMetadata"]["deprecated"])


def type_of(client: IoTClient, thing: str) -> str | None:
    return client.describe_thing(thingName=thing).get("thingTypeName")


def test_a_thing_types_life_replicates_and_its_deletion_waits_for_the_rule(
    regions: LocalRegions, tmp_path: Path
) -> None:
    east, west = iot(regions, EAST), iot(regions, WEST)
    with Journal(tmp_path / "journal.db") as journal, Replicator(regions, journal) as replicator:
        # Created, and used by a thing.
        east.create_thing_type(
            thingTypeName=TYPE, thingTypeProperties={"thingTypeDescription": "a pump sensor"}
        )
        east.create_thing(thingName="pump-1", thingTypeName=TYPE)
        wait_for(
            "the thing with its type in the secondary", lambda: type_of(west, "pump-1") == TYPE
        )
        described = west.describe_thing_type(thingTypeName=TYPE)
        assert described["thingTypeProperties"]["thingTypeDescription"] == "a pump sensor"

        # Removed from the thing, deprecated, undeprecated: each replicated.
        east.update_thing(thingName="pump-1", removeThingType=True)
        wait_for("the type's removal from the thing", lambda: type_of(west, "pump-1") is None)
        east.deprecate_thing_type(thingTypeName=TYPE)
        wait_for("the deprecation", lambda: deprecated(west))
        east.deprecate_thing_type(thingTypeName=TYPE, undoDeprecate=True)
        wait_for("the undeprecation", lambda: not deprecated(west))

        # The secondary misses the deprecation and the deletion: its control plane is down.
        regions.set_control_plane(WEST, "http503")
        east.deprecate_thing_type(thingTypeName=TYPE)
        # The primary enforces the rule too: its own refusal is the evidence, not the
        # runner's clock (a slow runner may reach the deadline before asking twice).
        assert error_code(lambda: east.delete_thing_type(thingTypeName=TYPE)) == (
            "InvalidRequestException"
        )
        refusals = delete_when_allowed(east, timeout_s=DELETE_AFTER_S + 10)
        assert refusals
        assert set(refusals) == {"InvalidRequestException"}
        assert error_code(lambda: east.describe_thing_type(thingTypeName=TYPE)) == (
            "ResourceNotFoundException"
        )

        # Back up: the engine deprecates the type in the secondary and schedules its deletion.
        regions.set_control_plane(WEST, "up")
        wait_for("the deprecation in the secondary", lambda: deprecated(west))
        assert error_code(lambda: west.delete_thing_type(thingTypeName=TYPE)) == (
            "InvalidRequestException"
        )  # too early: deprecated less than DELETE_AFTER_S ago
        wait_for("the scheduled deletion", lambda: replicator.engine.stats.scheduled >= 1)
        # The primary's deletion event may still reach the journal after the schedule
        # (it re-triggers the row, which is scheduled again): read the row once the
        # schedule is what it holds.
        wait_for("the schedule in the journal", lambda: scheduled_row(journal) is not None)
        row = scheduled_row(journal)
        assert row is not None
        state, not_before, reason, updated_at = row
        assert state == "pending"
        assert "deprecat" in reason
        # Scheduled, not slept: not_before is the secondary's own deprecation time plus
        # the wait (and the plan's margin), from recorded timestamps only. The engine
        # planned at not_before - wait - margin, deprecated, then recorded the schedule
        # at updated_at; the secondary's deprecation date lies between the two.
        west_deprecated_at = west.describe_thing_type(thingTypeName=TYPE)["thingTypeMetadata"][
            "deprecationDate"
        ].timestamp()
        planned_at = not_before - DELETE_AFTER_S - _SCHEDULE_MARGIN_S
        assert planned_at - STAMP_S <= west_deprecated_at <= updated_at + STAMP_S
        assert not_before > updated_at  # later than the scheduling itself: no sleeping

        # After the wait, the type is gone from the secondary too.
        wait_for(
            "the type's deletion in the secondary",
            lambda: (
                error_code(lambda: west.describe_thing_type(thingTypeName=TYPE))
                == "ResourceNotFoundException"
            ),
        )
        wait_for("the journal row done", lambda: journal_row(journal, KEY)[0] == "done")
        assert type_of(west, "pump-1") is None
        assert replicator.engine.stats.writes.get("DeleteThingType") == 1
        assert journal.counts(time.time()).dead == 0
    assert replicator.lines[-1]["event"] == "replicator.stopped"
