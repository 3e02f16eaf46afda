"""Shared test set-up: the simulators' fixtures (fleet PKI, region brokers, DNS server)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest_plugins = ["simulators.pytest_plugin"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo the stderr handler that an in-process ``iotdr`` command installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
