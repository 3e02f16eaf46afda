"""The device agent's exceptions: one root, families under it."""

from __future__ import annotations


class DeviceAgentError(Exception):
    """Root of every error the device agent raises on purpose.

    ``exit_code`` is what the ``iotdr`` command exits with when the error
    reaches it: 2 for usage, configuration and environment problems.
    """

    exit_code: int = 2


class ConfigError(DeviceAgentError):
    """The agent's configuration is invalid."""
