"""Readiness of a child process we started: its one JSON report line, read with a deadline.

The control plane and the door's processes each print one JSON line with an
``event`` key on stdout once they serve (or fail to start); readiness is that
line, never a sleep. :func:`read_report` waits for it.
"""

from __future__ import annotations

import json
import os
import selectors
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

__all__ = ["read_report"]


def read_report(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any] | None:
    """The child's first JSON line with an ``event`` (other output is skipped).

    Returns None when ``timeout_s`` passed first, ``{}`` when the child closed
    stdout (exited) without a report.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not selector.select(min(remaining, 0.2)):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                return {}
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            report = next((r for r in map(_report, lines) if r), None)
            if report is not None:
                return report


def _report(line: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) and "event" in found else None
