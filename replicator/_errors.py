"""The replicator's exceptions: one root, families under it."""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error the replicator raises on purpose.

    ``exit_code`` is what the ``iotdr`` command exits with when the error
    reaches it: 2 for usage, configuration and environment problems.
    """

    exit_code: int = 2
