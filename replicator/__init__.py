"""Replication of an AWS IoT registry and its shadows from a primary region to a secondary.

Imports nothing from ``simulators``. boto3 (the ``replicator`` extra) is
imported by ``replicator._aws`` only, which this package does not import:
``from replicator._aws import build_region`` where AWS is needed.

The parts, from the outside in:

- the change feed (:class:`MqttFeed`, :func:`accept_bodies` for SQS) parses
  registry events and shadow messages into records (:func:`parse_message`)
  and commits them to the :class:`Journal`;
- the :class:`Engine` takes due changes from the journal, reads each object in
  both regions through a :class:`RegionApi`, plans the minimal writes with the
  pure planners (:func:`plan_thing` and friends) and executes them within
  quotas (:class:`QuotaLimiter`);
- :func:`reconcile` diffs both regions completely with the same planners;
- failback (an :class:`Engine` with ``direction="failback"``) copies back what
  changed in the secondary since the regions were last in sync
  (:func:`failback_guard`, the sync points' :func:`fingerprint`), and
  :class:`AutoFailback` runs it beside the forward engine;
- the JITR handler (:class:`JitrHandler`) activates, in the secondary, the
  certificates devices present there on their first connect (``jitr`` mode);
- the service (``iotdr replicator run``) adds ``/healthz``, ``/readyz`` and
  ``/metrics``; ``replicator.lambda_handler`` and ``replicator.jitr_lambda``
  are the AWS Lambda entry points.
"""

from __future__ import annotations

from replicator._arns import ArnScope, rewrite_policy_document
from replicator._assess import Assessment
from replicator._engine import Engine, EngineConfig, EngineStats, Outcome
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
)
from replicator._failback import AutoFailback, OutageWatch
from replicator._feed import FEED_TOPICS, BatchResult, FeedConfig, MqttFeed, accept_bodies
from replicator._jitr import JitrConfig, JitrHandler
from replicator._journal import Claim, Journal, JournalCounts
from replicator._memory import InMemoryRegion
from replicator._ops import Op, Plan
from replicator._plan import Mode, plan_thing, plan_thing_group, plan_thing_type
from replicator._plan_security import plan_certificate, plan_policy
from replicator._plan_shadow import ShadowSync, plan_shadow
from replicator._quotas import DEFAULT_TPS, QuotaConfig, QuotaLimiter, RetryPolicy
from replicator._reconcile import Difference, ReconcileReport, reconcile
from replicator._records import (
    DeadLetter,
    Ignored,
    Record,
    origin_token,
    parse_message,
    parse_sqs_body,
)
from replicator._region import RegionApi
from replicator._state import (
    CertificateState,
    ObjectKey,
    PolicyState,
    PolicyVersion,
    ShadowState,
    ThingGroupState,
    ThingState,
    ThingTypeState,
)
from replicator._sync import Direction, failback_guard, fingerprint, forward_guard

__all__ = [
    "DEFAULT_TPS",
    "FEED_TOPICS",
    "AccessDeniedError",
    "ArnScope",
    "Assessment",
    "AutoFailback",
    "BatchResult",
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
    "InMemoryRegion",
    "InvalidRequestError",
    "JitrConfig",
    "JitrHandler",
    "Journal",
    "JournalCounts",
    "JournalError",
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
    "ShadowState",
    "ShadowSync",
    "ThingGroupState",
    "ThingState",
    "ThingTypeState",
    "ThrottledError",
    "accept_bodies",
    "failback_guard",
    "fingerprint",
    "forward_guard",
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
