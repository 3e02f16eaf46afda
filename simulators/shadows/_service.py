"""A local region's shadow service: one store, served over HTTP (iot-data) and MQTT."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Self

from simulators.shadows._http import IotDataApi, IotDataHttpServer
from simulators.shadows._mqtt import ShadowMqttBridge
from simulators.shadows._store import ShadowServiceError, ShadowStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["ShadowService", "require_loopback"]

logger = logging.getLogger(__name__)


def require_loopback(host: str, *, what: str, region: str | None = None) -> None:
    """Refuse anything but a loopback IP address: the simulators never leave 127.0.0.0/8.

    Raises:
        ShadowServiceError: ``host`` is not a loopback IP address.
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        msg = f"{what}: {host} is not a loopback IP address; the simulators use 127.0.0.0/8 only"
        raise ShadowServiceError(msg, region=region)


class ShadowService:
    """The Device Shadow service of one local region.

    The HTTP API listens on ``http_host`` (a loopback address; port 0 picks a
    free port, see :attr:`url`). With ``broker``, the MQTT bridge serves the
    shadow topics on that broker's plain listener, and HTTP updates are
    published there too.

    Args:
        region: the region's name (logs, errors).
        http_host: the loopback address of the HTTP API.
        http_port: its port, 0 for a free one.
        broker: the region broker's plain listener (host, port), or None for HTTP only.
        clock: epoch seconds, for versions' timestamps and metadata.

    Raises:
        ShadowServiceError: an address is not a loopback address.
    """

    def __init__(
        self,
        region: str,
        *,
        http_host: str,
        http_port: int = 0,
        broker: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        require_loopback(http_host, what=f"shadow service {region} HTTP", region=region)
        if broker is not None:
            require_loopback(broker[0], what=f"shadow service {region} broker", region=region)
        self.region = region
        self.store = ShadowStore(clock=clock)
        self._broker = broker
        self._bridge = (
            ShadowMqttBridge(self.store, host=broker[0], port=broker[1], region=region)
            if broker is not None
            else None
        )
        self._http = IotDataHttpServer(
            IotDataApi(self.store, self._bridge), host=http_host, port=http_port
        )
        self._http_host = http_host
        self._running = False

    def __repr__(self) -> str:
        broker = f"{self._broker[0]}:{self._broker[1]}" if self._broker else None
        state = self.url if self._running else "stopped"
        return (
            f"ShadowService({self.region!r}, {state}, broker={broker}, shadows={len(self.store)})"
        )

    @property
    def url(self) -> str:
        """The iot-data endpoint URL, e.g. ``http://127.0.0.2:41234``."""
        return f"http://{self._http_host}:{self._http.port}"

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called since."""
        return self._running

    @property
    def bridge(self) -> ShadowMqttBridge | None:
        """The MQTT bridge, when a broker was given."""
        return self._bridge

    def start(self) -> None:
        """Connect the bridge (if any), then serve HTTP; stop what started if either fails.

        Raises:
            ShadowServiceError: the broker is unreachable or the address unusable.
            AddressInUseError: the HTTP port is taken.
        """
        if self._running:
            return
        try:
            if self._bridge is not None:
                self._bridge.start()
            self._http.start()
        except BaseException:
            self._stop_parts()
            raise
        self._running = True
        logger.info(
            "shadow_service.started",
            extra={"region": self.region, "url": self.url, "broker": self._broker},
        )

    def stop(self) -> None:
        """Stop serving HTTP, then disconnect the bridge. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._stop_parts()
        logger.info("shadow_service.stopped", extra={"region": self.region})

    def _stop_parts(self) -> None:
        self._http.stop()
        if self._bridge is not None:
            self._bridge.stop()

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
