"""Keeps a gateway's registry view current: a snapshot, then long polls for changes.

One loop per gateway. It loads a snapshot, then asks for the changes after
the revision it holds, waiting up to ``long_poll_s`` for one: a revocation
reaches the gateway within a round trip. Every ``resync_interval_s`` (and
whenever the control plane says so: it restarted, or the journal no longer
reaches back) it loads a whole snapshot again, which repairs anything a bug
could have missed. While the control plane cannot be reached, the view
stays as it was (the data plane keeps admitting, as AWS IoT's does during a
control-plane outage); that is logged once, and its end once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulators._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.gateway._registry import Applied, RegistryView
    from simulators.gateway._source import RegistrySource

__all__ = ["RegistrySync", "RegistrySyncConfig"]

logger = logging.getLogger(__name__)

_RETRY_S = (0.25, 5.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySyncConfig:
    """How the gateway follows the control plane.

    Attributes:
        long_poll_s: how long one poll for changes waits on the server.
        resync_interval_s: a whole snapshot at least this often.
        start_timeout_s: how long the first snapshot may take before the gateway fails to start.
        request_timeout_s: how long one request may take (beyond a poll's wait).
    """

    long_poll_s: float = 20.0
    resync_interval_s: float = 30.0
    start_timeout_s: float = 10.0
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("long_poll_s", "resync_interval_s", "start_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                msg = f"registry sync {name} must be a positive number of seconds, not {value!r}"
                raise GatewayError(msg)


class RegistrySync:
    """The loop that feeds ``view`` from ``source`` and hands what changed to ``on_applied``.

    Args:
        source: the region's registry.
        view: the view to keep current.
        on_applied: called with what each load or apply changed (cuts, new CAs).
        config: intervals and timeouts.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        source: RegistrySource,
        view: RegistryView,
        on_applied: Callable[[Applied], None],
        *,
        config: RegistrySyncConfig,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._view = view
        self._on_applied = on_applied
        self._config = config
        self._clock = clock
        self._snapshot_at = -math.inf
        self.synced_at: float | None = None
        self.reachable = False
        self.snapshots = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"RegistrySync({self._view!r}, reachable={self.reachable}, "
            f"snapshots={self.snapshots}, failures={self.failures})"
        )

    async def load(self) -> None:
        """Load the first snapshot.

        Raises:
            GatewayError: the control plane did not answer within ``start_timeout_s``.
        """
        last_error = "no answer"
        try:
            async with asyncio.timeout(self._config.start_timeout_s):
                while True:
                    try:
                        await self._snapshot()
                    except GatewayError as exc:  # the control plane may still be starting
                        last_error = str(exc)
                        await asyncio.sleep(_RETRY_S[0])
                    else:
                        return
        except TimeoutError as exc:
            msg = (
                f"gateway {self._view.region}: no registry snapshot from {self._source!r} "
                f"within {self._config.start_timeout_s:g} s: {last_error}"
            )
            raise GatewayError(msg, region=self._view.region) from exc

    async def run(self) -> None:
        """Follow the changes until cancelled."""
        retry_s = _RETRY_S[0]
        resync = False
        while True:
            try:
                age = self._clock() - self._snapshot_at
                if resync or age >= self._config.resync_interval_s:
                    await self._snapshot()
                    resync = False
                    age = 0.0
                wait_s = max(
                    0.0, min(self._config.long_poll_s, self._config.resync_interval_s - age)
                )
                assert self._view.epoch is not None
                changes = await self._source.changes(self._view.revision, self._view.epoch, wait_s)
                if changes.resync or changes.epoch != self._view.epoch:
                    resync = True
                    continue
                self._on_applied(self._view.apply(changes))
                self._reached()
                retry_s = _RETRY_S[0]
            except GatewayError as exc:
                self.failures += 1
                if self.reachable or self.failures == 1:
                    logger.warning(
                        "gateway.registry.unreachable",
                        extra={"region": self._view.region, "error": str(exc)},
                    )
                self.reachable = False
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RETRY_S[1])

    async def _snapshot(self) -> None:
        snapshot = await self._source.snapshot()
        self._on_applied(self._view.load(snapshot))
        self._snapshot_at = self._clock()
        self.snapshots += 1
        self._reached()

    def _reached(self) -> None:
        self.synced_at = self._clock()
        if not self.reachable:
            if self.failures:
                logger.info("gateway.registry.reachable", extra={"region": self._view.region})
            self.reachable = True
