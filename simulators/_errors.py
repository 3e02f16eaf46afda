"""The simulators' exceptions: one root, families under it, fields on them."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every error the simulators raise on purpose.

    ``exit_code`` is what the ``iotdr`` command exits with when the error
    reaches it: 2 for usage, configuration and environment problems.
    """

    exit_code: int = 2


class PKIError(SimulatorError):
    """A key, certificate or CSR could not be made, read or written."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class BrokerError(SimulatorError):
    """A region's MQTT broker could not be started or stopped."""

    def __init__(self, message: str, *, region: str | None = None) -> None:
        super().__init__(message)
        self.region = region


class BrokerNotFoundError(BrokerError):
    """The requested broker implementation is not installed."""


class AddressInUseError(SimulatorError):
    """A listener's address and port are taken by another process."""

    def __init__(self, host: str, port: int, *, what: str) -> None:
        super().__init__(
            f"{what}: {host}:{port} is already in use; stop the process holding it "
            "or choose another port"
        )
        self.host = host
        self.port = port


class ZoneError(SimulatorError):
    """A DNS zone file or a record change is invalid."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


class GatewayError(SimulatorError):
    """A region's gateway (the door in front of its broker) could not start, sync or switch."""

    def __init__(self, message: str, *, region: str | None = None) -> None:
        super().__init__(message)
        self.region = region
