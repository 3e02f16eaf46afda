"""The replicator as an AWS Lambda function behind an SQS FIFO queue.

For fleets that outgrow one sidecar: an IoT rule writes the primary's registry
events and shadow documents to an SQS FIFO queue (``MessageGroupId`` = the
thing name, bodies ``{"topic": ..., "payload": ...}``, parsed as the MQTT feed's
messages are), and this handler applies
them with the same engine as ``iotdr replicator run``.

Per batch: every message is parsed and journaled; the affected objects are
applied at once (in parallel); the response lists, for SQS's partial batch
response (``ReportBatchItemFailures``), the messages whose objects were not
applied (throttled, a region down, a step scheduled for later), so that SQS
delivers them again: SQS is the durable queue and the timer, the journal only
a per-container working set (``:memory:`` by default).

On a FIFO queue the response follows AWS's documented rule for FIFO event
sources: stop at the first failure and return it *and every later message of
the batch*, whatever its group (:func:`fifo_failures`). The handler has in fact
tried the later ones too (it applies the batch at once); delivering them again
is harmless, since the engine reads the source again and writes only what
differs, and it keeps each group's order. On a standard queue only the failed
messages are returned. A body that does not parse goes to the journal's dead
letters and is not reported, unless it comes after the first failure of a
FIFO batch (the rule above; it is dead-lettered again on its next delivery).
AccessDenied raises, so that the whole batch comes back after the permission is
fixed; the log line names it.

Scheduled steps and the queue's settings. AWS deletes a thing type only five
minutes (:data:`~replicator.core._plan.THING_TYPE_DELETE_AFTER_S`, 300 s) after its
deprecation; the engine deprecates it and *schedules* the deletion. Such a
message is reported failed at every delivery until the deletion is due: SQS's
redelivery is the timer. The queue must therefore redeliver for longer than
that before giving up: with visibility timeout ``V`` and ``maxReceiveCount``
``N`` of the redrive policy, ``V * (N - 1)`` must exceed 300 s plus a margin
(360 s or more: for example ``V = 60 s, N >= 8``), or the message ends in the
dead-letter queue with the type still in the secondary. On a FIFO queue the
messages after it in its batches are returned with it and need the same room.
The Lambda's own timeout must stay below ``V``, as AWS requires anyway.

A scheduled step is reported even when ``IOTDR_REPLICATOR_JOURNAL`` names a
file (on EFS, say), deliberately: nothing would invoke the function when the
step falls due if no message came, and the journal is SQLite in WAL mode, not
safe to share between the concurrent containers of one function over a
network file system. A journal file only spares work within one container.

Configuration, from the environment (the names of ``iotdr replicator``'s
options): ``IOTDR_PRIMARY_REGION``, ``IOTDR_SECONDARY_REGION`` (required),
``IOTDR_REPLICATOR_MODE`` (``complete``), ``IOTDR_PRIMARY_ENDPOINT_URL``,
``IOTDR_SECONDARY_ENDPOINT_URL``, ``IOTDR_PRIMARY_DATA_ENDPOINT_URL``,
``IOTDR_SECONDARY_DATA_ENDPOINT_URL``, ``IOTDR_PRIMARY_ACCOUNT_ID``,
``IOTDR_SECONDARY_ACCOUNT_ID``, ``IOTDR_REPLICATOR_JOURNAL`` (``:memory:``, or
a file under ``/tmp``) and ``IOTDR_REPLICATOR_WORKERS`` (8).

The engine (clients, quota buckets, journal) is built on the first invocation
and kept for the container's life: Lambda reuses a warm container, and
building boto3 clients per batch would cost more than the batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from replicator._errors import AccessDeniedError, ConfigError, CredentialsError, ReplicatorError
from replicator.core._records import DeadLetter, parse_sqs_body

if TYPE_CHECKING:
    from replicator.core._state import ObjectKey
    from replicator.runtime._engine import Engine
    from replicator.runtime._settings import Settings

__all__ = ["LambdaConfig", "LambdaReplicator", "fifo_failures", "handler"]

logger = logging.getLogger(__name__)

APPLIED_RESULTS = frozenset({"done", "dead"})
"""Outcomes after which SQS must not deliver a message again.

``done``: applied. ``dead``: given up on with the reason in the journal (a
document that does not parse, or a change that kept failing): delivering it
again would fail the same way.
"""

_REGION_FIELDS = tuple(
    f"{role}_{name}"
    for role in ("primary", "secondary")
    for name in ("region", "endpoint_url", "data_endpoint_url", "account_id")
)
_RETRY_S = 0.05  # the engine's shortest wait before a retry, and this handler's backoff


@dataclass(frozen=True, slots=True, kw_only=True)
class LambdaConfig:
    """The handler's configuration (see the module docstring for the variables)."""

    primary_region: str
    secondary_region: str
    mode: str = "complete"
    primary_endpoint_url: str | None = None
    secondary_endpoint_url: str | None = None
    primary_data_endpoint_url: str | None = None
    secondary_data_endpoint_url: str | None = None
    primary_account_id: str | None = None
    secondary_account_id: str | None = None
    journal: str = ":memory:"
    workers: int = 8

    def __post_init__(self) -> None:
        if self.primary_region == self.secondary_region:
            raise ConfigError("the primary and the secondary region must differ")
        if self.mode not in ("complete", "jitr"):
            raise ConfigError(f"IOTDR_REPLICATOR_MODE {self.mode!r} is not complete or jitr")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"IOTDR_REPLICATOR_WORKERS {self.workers} is not in 1..256")

    def settings(self) -> Settings:
        """The composition root's settings: SQS redelivers, so the backoff is short."""
        from replicator.aws._calls import RegionConfig  # noqa: PLC0415 - boto3 when built
        from replicator.runtime._engine import EngineConfig  # noqa: PLC0415
        from replicator.runtime._quotas import RetryPolicy  # noqa: PLC0415
        from replicator.runtime._settings import Settings  # noqa: PLC0415

        values = dataclasses.asdict(self)
        primary, secondary = (
            RegionConfig.of_role(values, role) for role in ("primary", "secondary")
        )
        engine = EngineConfig(
            mode="jitr" if self.mode == "jitr" else "complete",
            workers=self.workers,
            # SQS delivers a failed message again after its visibility timeout:
            # that is the backoff. The journal's row must be due by then.
            backoff=RetryPolicy(max_attempts=1_000_000, base_s=_RETRY_S, cap_s=_RETRY_S),
            # No later invocation is sure to come for a re-check; reconcile repairs.
            thing_recheck_s=None,
        )
        return Settings(primary=primary, secondary=secondary, engine=engine, journal=self.journal)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LambdaConfig:
        """Read the ``IOTDR_*`` variables.

        Raises:
            ConfigError: a region is missing, or a value is invalid.
        """
        # the fields are the variables' names: primary_endpoint_url, IOTDR_PRIMARY_ENDPOINT_URL
        values = {name: environ.get(f"IOTDR_{name.upper()}") or None for name in _REGION_FIELDS}
        primary, secondary = values.pop("primary_region"), values.pop("secondary_region")
        for name, region in (("PRIMARY", primary), ("SECONDARY", secondary)):
            if region is None:
                raise ConfigError(f"IOTDR_{name}_REGION is not set")
        workers = environ.get("IOTDR_REPLICATOR_WORKERS") or "8"
        if not workers.isdigit():
            raise ConfigError(f"IOTDR_REPLICATOR_WORKERS {workers!r} is not a number")
        return cls(
            primary_region=str(primary),
            secondary_region=str(secondary),
            mode=environ.get("IOTDR_REPLICATOR_MODE") or "complete",
            journal=environ.get("IOTDR_REPLICATOR_JOURNAL") or ":memory:",
            **values,
            workers=int(workers),
        )


@dataclass(frozen=True, slots=True)
class _Message:
    message_id: str
    group: str | None
    body: str


def fifo_failures(messages: Sequence[tuple[str, str | None]], failed: set[str]) -> list[str]:
    """The ids to report to SQS, in batch order.

    AWS's rule for FIFO queues: from the first failed message on, every message
    of the batch, whatever its group. On a standard queue (no group ids): the
    failed messages only.

    Args:
        messages: (message id, group id) in the batch's order; group None on a
            standard queue.
        failed: the ids whose objects were not applied.
    """
    if all(group is None for _, group in messages):
        return [message_id for message_id, _ in messages if message_id in failed]
    for index, (message_id, _) in enumerate(messages):
        if message_id in failed:
            return [later for later, _ in messages[index:]]
    return []


class LambdaReplicator:
    """Applies SQS batches with one engine, kept across invocations.

    Args:
        engine: the engine (its journal is the per-container working set).
        workers: objects applied in parallel within a batch.
    """

    def __init__(self, engine: Engine, *, workers: int = 8) -> None:
        self.engine = engine
        self._workers = workers
        self._lock = threading.Lock()  # one batch at a time per container, as Lambda runs

    def __repr__(self) -> str:
        return f"LambdaReplicator({self.engine!r})"

    def close(self) -> None:
        """Close the journal."""
        self.engine.journal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def handle(self, event: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
        """Apply one SQS event; return the partial batch response.

        Raises:
            AccessDeniedError: a permission is missing (the whole batch comes back).
            JournalError: the journal cannot be read (the whole batch comes back).
        """
        with self._lock:
            messages = _messages(event)
            keys_of, failed = self._journal(messages)
            results = self._apply()
        for message in messages:
            keys = keys_of.get(message.message_id, ())
            if any(results.get(key) not in APPLIED_RESULTS for key in keys):
                failed.add(message.message_id)
        reported = fifo_failures([(m.message_id, m.group) for m in messages], failed)
        logger.info(
            "replicator.lambda.batch",
            extra={
                "messages": len(messages),
                "objects": len(results),
                "results": dict(collections.Counter(results.values())),
                "reported": len(reported),
            },
        )
        return {"batchItemFailures": [{"itemIdentifier": m} for m in reported]}

    def _journal(
        self, messages: Sequence[_Message]
    ) -> tuple[dict[str, tuple[ObjectKey, ...]], set[str]]:
        """Journal the batch: (the object keys of each message, the ids that failed)."""
        journal, region = self.engine.journal, self.engine.source.region
        keys_of: dict[str, tuple[ObjectKey, ...]] = {}
        failed: set[str] = set()
        now = self.engine.now()
        for message in messages:
            parsed = parse_sqs_body(message.body, region=region)  # never raises
            try:
                result, keys = journal.journal_parsed(
                    parsed, topic="(sqs)", raw=message.body, now=now
                )
            except ReplicatorError as exc:
                logger.exception(
                    "replicator.lambda.journal_failed",
                    extra={"id": message.message_id, "error": str(exc)},
                )
                failed.add(message.message_id)
                continue
            keys_of[message.message_id] = keys
            if isinstance(result, DeadLetter):
                logger.warning(
                    "replicator.lambda.dead_letter",
                    extra={"id": message.message_id, "reason": result.reason},
                )
        return keys_of, failed

    def _apply(self) -> dict[ObjectKey, str]:
        """Apply every due object (the batch's, and earlier ones due now); their results.

        Raises:
            AccessDeniedError: after the other objects of the batch finished.
        """
        # A retried row waits at least the worker's shortest backoff; a message SQS
        # delivers again must be tried again at once, so look that far ahead.
        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
            try:  # throttled and unavailable come back as retry: enough here
                return self.engine.worker.run_once(pool, ahead_s=_RETRY_S)
            except (AccessDeniedError, CredentialsError) as denied:
                logger.error(  # noqa: TRY400 - one line, the permission named
                    "replicator.lambda.denied",
                    extra={
                        "permission": getattr(denied, "permission", None),
                        "region": denied.region,
                        "error": str(denied),
                    },
                )
                raise


def _messages(event: object) -> list[_Message]:
    """The SQS records of ``event`` in order (a record without an id cannot be reported)."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list | tuple):
        logger.warning("replicator.lambda.no_records", extra={"event": str(event)[:200]})
        return []
    found = []
    for record in records:
        if not isinstance(record, Mapping) or not isinstance(record.get("messageId"), str):
            logger.warning("replicator.lambda.no_message_id", extra={"record": str(record)[:200]})
            continue
        attributes = record.get("attributes")
        group = attributes.get("MessageGroupId") if isinstance(attributes, Mapping) else None
        body = record.get("body")
        found.append(
            _Message(
                record["messageId"],
                group if isinstance(group, str) else None,
                body if isinstance(body, str) else "",
            )
        )
    return found


# One replicator per container (see the module docstring): Lambda's model, not a library's.
_cached: LambdaReplicator | None = None
_cache_lock = threading.Lock()


def _replicator() -> LambdaReplicator:
    global _cached  # noqa: PLW0603 - the per-container cache
    from replicator.runtime._build import build  # noqa: PLC0415 - boto3, the replicator extra's

    with _cache_lock:
        if _cached is None:
            config = LambdaConfig.from_environ(os.environ)
            engine = build(config.settings()).engine
            assert engine is not None
            _cached = LambdaReplicator(engine, workers=config.workers)
        return _cached


def handler(event: Mapping[str, Any], context: object) -> dict[str, list[dict[str, str]]]:
    """The Lambda entry point for SQS event source mappings with ``ReportBatchItemFailures``.

    Args:
        event: the SQS event (``{"Records": [...]}``).
        context: Lambda's context (unused).

    Returns:
        ``{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}``.

    Raises:
        ConfigError: the environment is incomplete or invalid.
        AccessDeniedError: a permission is missing; the whole batch comes back.
    """
    del context
    return _replicator().handle(event)
