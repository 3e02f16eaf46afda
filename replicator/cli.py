"""The ``iotdr replicator`` and ``iotdr tools`` command groups.

This module imports only click at the top so that ``iotdr --help`` stays
fast; each command imports what it needs when it runs.
"""

from __future__ import annotations

import click

__all__ = ["replicator", "tools"]


@click.group()
def replicator() -> None:
    """Replicate the registry and shadows between regions (the sidecar service)."""


@click.group()
def tools() -> None:
    """Operator tools: provisioning, comparison, search and lookup across regions."""
