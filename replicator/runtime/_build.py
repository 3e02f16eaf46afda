"""The composition root: one :class:`Settings` tree in, the running parts out.

Every entry point (``iotdr replicator run``, ``reconcile`` and ``jitr``, both
Lambdas) turns its inputs (flags, the environment, a TOML file,
through click's ``default_map``) into :class:`Settings`, and :func:`build` makes
the rest here and nowhere else: the quota buckets (one set per process), the
regions' adapters (:func:`~replicator.aws._adapter.build_region`, where the boto3
clients are built), the journals, the engines and the JITR handler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from replicator.runtime._engine import Engine
from replicator.runtime._jitr import JitrHandler
from replicator.runtime._journal import Journal
from replicator.runtime._quotas import QuotaLimiter, RetryPolicy

if TYPE_CHECKING:
    from replicator.core._region import RegionApi
    from replicator.runtime._settings import Settings

__all__ = ["Runtime", "build"]

_PRIMARY_CONNECT_S = 2.0  # JITR's check of the primary must not hold up an activation
_PRIMARY_READ_S = 5.0


@dataclass(slots=True)
class Runtime:
    """What :func:`build` made; :meth:`close` closes the journals."""

    limiter: QuotaLimiter
    engine: Engine | None = None
    failback: Engine | None = None
    jitr: JitrHandler | None = None
    journals: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __repr__(self) -> str:
        return f"Runtime(engine={self.engine!r}, failback={self.failback!r}, jitr={self.jitr!r})"

    def close(self) -> None:
        """Close the journals."""
        self.journals.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def build(settings: Settings) -> Runtime:
    """Build the quota buckets, the regions, the journals, the engines and the handler.

    Raises:
        ConfigError: boto3 cannot build the clients.
        CredentialsError: ``check_credentials`` and no usable credentials.
        JournalError: a journal cannot be opened.
    """
    from replicator.aws._adapter import RegionConfig, build_region  # noqa: PLC0415 - boto3

    runtime = Runtime(QuotaLimiter(settings.quotas))
    try:
        check = settings.check_credentials

        def region(config: RegionConfig) -> RegionApi:
            return build_region(config, limiter=runtime.limiter, check_credentials=check)

        def journal(queue: str) -> Journal:
            opened = Journal(
                settings.journal, queue=queue, max_dead_letters=settings.max_dead_letters
            )
            return runtime.journals.enter_context(opened)

        engine = settings.engine
        primary = region(settings.primary) if engine and settings.primary else None
        secondary = region(settings.secondary)
        if engine is not None and primary is not None:
            back = engine.direction == "failback"
            source, target = (secondary, primary) if back else (primary, secondary)
            queue = journal("failback" if back else "changes")
            runtime.engine = Engine(source=source, target=target, journal=queue, config=engine)
            if engine.both_ways:  # the failback queue: the same engine (automatic failback)
                runtime.failback = runtime.engine.serving(journal("failback"))
        jitr = settings.jitr
        if jitr is not None:
            asked = None  # the primary asked before an activation: one attempt, short timeouts
            if jitr.primary_region is not None:
                config = RegionConfig(
                    region=jitr.primary_region,
                    endpoint_url=jitr.primary_endpoint_url,
                    connect_timeout_s=_PRIMARY_CONNECT_S,
                    read_timeout_s=_PRIMARY_READ_S,
                )
                one = RetryPolicy(max_attempts=1)
                asked = build_region(config, limiter=runtime.limiter, retry=one)
            runtime.jitr = JitrHandler(secondary, journal("jitr"), jitr, primary=asked)
    except BaseException:
        runtime.close()
        raise
    return runtime
