"""A :class:`RegionGateway` on an event loop in a thread of its own, for synchronous code."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Self

from simulators._loopthread import LoopThread
from simulators.gateway._gateway import RegionGateway

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from simulators.gateway._config import GatewayConfig
    from simulators.gateway._faults import GatewayFault, GatewayFaultMode
    from simulators.gateway._source import RegistrySource

__all__ = ["ThreadedRegionGateway"]


class ThreadedRegionGateway:
    """A region's gateway running in a daemon thread; every method blocks until done.

    Args:
        config: the gateway's configuration.
        source: the region's registry (default: the control plane of ``config``).
        clock: monotonic seconds.
        rng: draws ``degraded``'s refusals.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        source: RegistrySource | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.gateway = RegionGateway(config, source=source, clock=clock, rng=rng)
        self._runner = LoopThread(f"gateway-{config.region}")

    def __repr__(self) -> str:
        return f"Threaded{self.gateway!r}"

    @property
    def region(self) -> str:
        """The region."""
        return self.gateway.region

    @property
    def host(self) -> str:
        """The address devices connect to."""
        return self.gateway.config.host

    @property
    def port(self) -> int:
        """The mTLS port devices connect to (resolved after :meth:`start`)."""
        return self.gateway.port

    @property
    def alpn_port(self) -> int | None:
        """The 443-style port (ALPN ``x-amzn-mqtt-ca`` required), if the door has one."""
        return self.gateway.alpn_port

    @property
    def admin_url(self) -> str | None:
        """The admin endpoint, for :class:`~simulators.gateway.GatewayAdmin`."""
        return self.gateway.admin_url

    def start(self) -> None:
        """Start the thread, load the registry and listen.

        Raises:
            GatewayError: the TLS files or the control plane failed.
            AddressInUseError: a port is taken.
        """
        self._runner.start()
        try:
            self._runner.run(self.gateway.start())
        except BaseException:
            self._runner.stop()
            raise

    def set_fault(self, fault: GatewayFault | GatewayFaultMode | str) -> GatewayFault:
        """Switch the fault (``up``, ``down``, ``blackhole``, ``partial``, ``degraded``).

        Raises:
            GatewayError: an unknown mode.
        """
        return self._runner.run(self.gateway.set_fault(fault))

    def status(self) -> dict[str, Any]:
        """The gateway's status, read on its loop."""

        async def read() -> dict[str, Any]:
            return self.gateway.status()

        return self._runner.run(read())

    def pending(self, wanted: Mapping[str, str]) -> int:
        """How many of ``wanted`` (certificate id -> thing) the door would not admit yet."""

        async def read() -> int:
            return self.gateway.pending(wanted)

        return self._runner.run(read())

    def stop(self) -> None:
        """Close everything and stop the thread."""
        if self._runner.alive:
            self._runner.run(self.gateway.stop())
            self._runner.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
