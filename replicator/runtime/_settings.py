"""The settings tree: what the composition root (``_build.py``) builds, grouped by concern.

Frozen dataclasses, validated when made; every invalid value is a
:class:`~replicator._errors.ConfigError`, one line naming it. Only the entry
points fill them (from flags, the environment and a TOML file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from replicator._errors import ConfigError
from replicator.core._plan import THING_TYPE_DELETE_AFTER_S
from replicator.runtime._quotas import QuotaConfig, RetryPolicy

if TYPE_CHECKING:
    from replicator.aws._calls import RegionConfig
    from replicator.core._jitr_plan import JitrConfig
    from replicator.core._plan import Mode
    from replicator.core._sync import Direction

__all__ = ["EngineConfig", "Settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """How the engine works.

    Attributes:
        mode: ``complete`` or ``jitr``.
        workers: objects applied in parallel (the quota buckets pace them).
        batch: rows claimed at a time.
        max_attempts: attempts before a change that keeps failing is dead-lettered
            (throttling and outages are retried without limit).
        backoff: the wait before a failed change is tried again.
        dependency_ttl_s: how long an object applied as a requirement counts as
            in place for the next object that requires it.
        thing_recheck_s: apply a created thing again this long after its
            creation: AWS publishes no event when a certificate is attached, which
            usually happens just after the create. None: never.
        poll_s: how often to look for due changes when there are none.
        thing_type_delete_after_s: AWS's wait between deprecating and deleting a type.
        direction: ``forward`` or ``failback`` (see ``_engine.py``).
        keep_target_changes: forward: leave a registry object that changed only
            in the target since the last sync (reported as a conflict; see
            ``_sync.guard``).
        both_ways: judge each object three ways and write toward the stale
            side, the secondary or the primary (``--failback auto``; the
            failback queue is the same engine, ``Engine.serving``).
        delete_target_only: forward: delete objects that exist only in the
            target although no sync point shows they were replicated (by
            default they are kept and reported: ``_sync.target_only_guard``).
    """

    mode: Mode = "complete"
    workers: int = 8
    batch: int = 256
    max_attempts: int = 8
    backoff: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=1_000_000, base_s=1.0, cap_s=300.0)
    )
    dependency_ttl_s: float = 60.0
    thing_recheck_s: float | None = 30.0
    poll_s: float = 0.5
    thing_type_delete_after_s: float = THING_TYPE_DELETE_AFTER_S
    direction: Direction = "forward"
    keep_target_changes: bool = False
    both_ways: bool = False
    delete_target_only: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("complete", "jitr"):
            raise ConfigError(f"mode {self.mode!r} is not 'complete' or 'jitr'")
        if self.direction not in ("forward", "failback"):
            raise ConfigError(f"direction {self.direction!r} is not 'forward' or 'failback'")
        if self.workers < 1 or self.batch < 1 or self.max_attempts < 1:
            raise ConfigError("workers, batch and max_attempts must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What to build, grouped by concern.

    Attributes:
        primary: the primary region (None: JITR without a check of the primary).
        secondary: the secondary region.
        engine: the engine's configuration; None: no engine (the JITR handler alone).
            With ``direction="failback"`` it copies the secondary to the primary;
            with ``both_ways`` it also serves the journal's ``failback`` queue.
        jitr: the JITR handler's configuration; None: no handler.
        quotas: the APIs' rates.
        journal: the SQLite journal's path (``:memory:``: a working set only).
        max_dead_letters: the most dead letters the journal keeps (the oldest
            are pruned past it, and counted in ``/metrics``).
        check_credentials: look for credentials at once (services, not Lambdas).
    """

    primary: RegionConfig | None = None
    secondary: RegionConfig
    engine: EngineConfig | None = None
    jitr: JitrConfig | None = None
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    journal: str = ":memory:"
    max_dead_letters: int = 10_000
    check_credentials: bool = False

    def __post_init__(self) -> None:
        if self.engine is not None and self.primary is None:
            raise ConfigError("the engine needs the primary region")
        if self.max_dead_letters < 1:
            raise ConfigError("max_dead_letters must be at least 1")
        if self.primary is not None and self.primary.region == self.secondary.region:
            raise ConfigError("the primary and the secondary region must differ")
