"""The ``iotdr tools`` commands (registered in ``replicator/cli.py``'s ``tools`` group).

Each family's commands live in their own module (``_cli_registry``,
``_cli_fleet``, ``_cli_checks``); what they share is in ``_options``. Only
click is imported at the top of each, so that ``iotdr --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicator.tools._cli_checks import e2e, shadow_test
from replicator.tools._cli_fleet import bulk_provision, create_device, delete_devices, extract_certs
from replicator.tools._cli_registry import compare_devices, enable_events, lookup, search

if TYPE_CHECKING:
    import click

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = [
    bulk_provision,
    extract_certs,
    create_device,
    delete_devices,
    compare_devices,
    shadow_test,
    search,
    lookup,
    enable_events,
    e2e,
]
"""Registered in ``replicator/cli.py``'s ``tools`` group."""
