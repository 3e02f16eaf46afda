"""Replication of an AWS IoT registry and its shadows from a primary region to a secondary.

Imports nothing from ``simulators``. boto3 (the ``replicator`` extra) is
imported by ``replicator.aws`` only, which this package does not import:
``replicator.runtime._build.build`` imports it when it builds the regions.

The layout, from the inside out::

    _errors.py   the one root exception, its families, the policy for failures
    core/        pure: no I/O, no clocks, no logging
      _state.py _records.py _ops.py       states, change records, the writes
      _record_json.py                     records as the journal keeps them
      _plan.py _plan_security.py _plan_shadow.py   the planners
      _sync.py                            sync points; judge(): which region is stale
      _arns.py _retry.py                  ARN rewriting, RetryPolicy
      _jitr_plan.py                       JITR's screen and provisioning plan
      _region.py                          RegionApi: the port to one region
    aws/         the adapter behind RegionApi
      _adapter.py                         build_region(): where the boto3 clients are built
      _calls.py _writes.py _iam.py        pacing and translation per call; writes; IAM
    runtime/     journal, worker, quotas, feed, host
      _journal.py _sync_points.py         the SQLite journal: queues, sync points
      _dead_letters.py                    its dead letters (bounded) and dead changes
      _worker.py                          JournalWorker: where a retry decision happens
      _engine.py _assess.py               the engine's apply(key), toward the stale side
      _jitr.py                            the JITR handler's handle(certificate), sweep()
      _reconcile.py _failback.py          full passes; automatic failback
      _anti_entropy.py                    the service's background reconcile pass
      _quotas.py _feed.py _stats.py       token buckets; the MQTT feed; counters
      _feed_config.py                     the feed's broker, session and TLS rule
      _host.py _http.py _health.py _metrics.py   ServiceHost and its endpoints
      _settings.py _build.py              Settings and build(): the composition root
    cli.py _jitr_cli.py _config.py        entry points: ``iotdr replicator ...``
    _dead_letters_cli.py                  ``iotdr replicator dead-letters``
    lambda_handler.py jitr_lambda.py      entry points: the AWS Lambda functions
    tools/       ``iotdr tools ...``: the operators' provisioning, comparison and lookup

Where does a retry decision happen? ``runtime/_worker.py`` (:func:`classify`
and :class:`JournalWorker`), for every change of every queue; the adapter only
retries one call, throttled or its region unavailable, a few times within its
``RetryPolicy`` (``aws/_calls.py``). Where are the boto3 clients built?
``aws/_adapter.py`` (:func:`build_region`), called by ``runtime/_build.py``
(and, for the operator tools, ``tools/_context.py``). Time is the project's one clock protocol,
:class:`device_agent.Clock` (the quota buckets and the adapter's retries sleep
on it; the journal's times are its ``time`` readings); tests use
:class:`device_agent.testing.FakeClock`.

The flow: a feed (:class:`MqttFeed`; the Lambda's SQS batches) parses
registry events and shadow messages into records and commits them to the
:class:`Journal`; a :class:`JournalWorker` claims them and hands each to the
:class:`Engine` (which reads both regions through :class:`RegionApi`, plans the
minimal writes and executes them within quotas) or to the :class:`JitrHandler`;
:func:`reconcile` diffs both regions completely with the same planners.
With automatic failback one engine runs both ways: each object is judged
three ways (its two regions and its sync point, :func:`judge`) and written
toward the stale side, whichever queue its change came in (the primary's or
the secondary's feed); :class:`AutoFailback` runs the failback queue and the
full pass after an outage. The
:class:`ServiceHost` runs feeds and workers with ``/healthz``, ``/readyz`` and
``/metrics``.
"""

from __future__ import annotations

from replicator._errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    CredentialsError,
    InvalidRequestError,
    JournalError,
    NotFoundError,
    PermanentError,
    PolicyDocumentError,
    RefusedError,
    RegionError,
    RegionUnavailableError,
    ReplicatorError,
    RetryableError,
    ThrottledError,
    UnreachableError,
)
from replicator.core._arns import ArnScope, rewrite_policy_document
from replicator.core._jitr_plan import JitrConfig
from replicator.core._ops import Op, Plan
from replicator.core._plan import Mode, plan_thing, plan_thing_group, plan_thing_type
from replicator.core._plan_security import plan_certificate, plan_policy
from replicator.core._plan_shadow import ShadowSync, plan_shadow
from replicator.core._records import (
    DeadLetter,
    Ignored,
    Record,
    origin_token,
    parse_message,
    parse_sqs_body,
)
from replicator.core._region import RegionApi
from replicator.core._state import (
    CertificateState,
    ObjectKey,
    PolicyState,
    PolicyVersion,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)
from replicator.core._sync import (
    Direction,
    Verdict,
    failback_guard,
    fingerprint,
    guard,
    judge,
)
from replicator.runtime._assess import Assessment
from replicator.runtime._build import Runtime, build
from replicator.runtime._engine import Engine, EngineConfig, EngineStats
from replicator.runtime._failback import AutoFailback, OutageWatch
from replicator.runtime._feed import FEED_TOPICS, FeedConfig, MqttFeed
from replicator.runtime._host import ServiceHost, ServiceOps
from replicator.runtime._jitr import JitrHandler
from replicator.runtime._journal import Claim, Journal, JournalCounts
from replicator.runtime._quotas import DEFAULT_TPS, QuotaConfig, QuotaLimiter, RetryPolicy
from replicator.runtime._reconcile import Difference, ReconcileReport, reconcile
from replicator.runtime._settings import Settings
from replicator.runtime._worker import JournalWorker, Outcome, WorkerConfig, classify

__all__ = [
    "DEFAULT_TPS",
    "FEED_TOPICS",
    "AccessDeniedError",
    "ArnScope",
    "Assessment",
    "AutoFailback",
    "CertificateState",
    "Claim",
    "ConfigError",
    "ConflictError",
    "CredentialsError",
    "DeadLetter",
    "Difference",
    "Direction",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "FeedConfig",
    "Ignored",
    "InvalidRequestError",
    "JitrConfig",
    "JitrHandler",
    "Journal",
    "JournalCounts",
    "JournalError",
    "JournalWorker",
    "Mode",
    "MqttFeed",
    "NotFoundError",
    "ObjectKey",
    "Op",
    "OutageWatch",
    "Outcome",
    "PermanentError",
    "Plan",
    "PolicyDocumentError",
    "PolicyState",
    "PolicyVersion",
    "QuotaConfig",
    "QuotaLimiter",
    "ReconcileReport",
    "Record",
    "RefusedError",
    "RegionApi",
    "RegionError",
    "RegionUnavailableError",
    "ReplicatorError",
    "RetryPolicy",
    "RetryableError",
    "Runtime",
    "ServiceHost",
    "ServiceOps",
    "Settings",
    "ShadowState",
    "ShadowSync",
    "ThingGroupState",
    "ThingState",
    "ThingTypeState",
    "ThrottledError",
    "UnreachableError",
    "Verdict",
    "WorkerConfig",
    "build",
    "classify",
    "failback_guard",
    "fingerprint",
    "guard",
    "judge",
    "origin_token",
    "parse_message",
    "parse_sqs_body",
    "plan_certificate",
    "plan_policy",
    "plan_shadow",
    "plan_thing",
    "plan_thing_group",
    "plan_thing_type",
    "reconcile",
    "rewrite_policy_document",
]
