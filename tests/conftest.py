"""Shared test set-up: the simulators' fixtures, and the record of every AWS call the code makes.

The recorder: every botocore session built while the tests run gets a
``provide-client-params`` handler (botocore's event hooks: the first event of
every call, before a stub or a short-circuit can answer it) that notes the IAM action of
the call (``iot:DescribeThing``) under the identity whose code made it, told by
the call's stack: the JITR handler's modules, the replicator's, the drill's
Route 53 flip and shadow reads. The IAM coverage test
(``tests/unit/test_iam_coverage.py``) runs last and compares the record with
the policies of ``iotdr replicator iam-policy``. With ``IOTDR_AWS_CALLS_FILE``
set, the record is also written there (JSON) when the session ends.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

pytest_plugins = ["simulators.pytest_plugin"]

_ROOT = Path(__file__).resolve().parents[1]

AWS_CALLS = pytest.StashKey[Counter[tuple[str, str]]]()
"""(identity, IAM action) -> calls, for the session."""

AUDIT_MARKER = "aws_call_audit"
"""Tests that read the session's record: collected last, after every call was made."""

# Who made a call, by the first of these found anywhere in its stack.
_IDENTITY_OF_MODULE = (
    ("replicator/runtime/_jitr.py", "jitr"),
    ("replicator/jitr_lambda.py", "jitr"),
    ("replicator/_jitr_cli.py", "jitr"),
    ("replicator/tools/", "operator"),  # `iotdr tools`: the operator's own credentials
    ("simulators/fleet/_aws_stage.py", "drill"),
    ("deploy/cloudformation/region.yaml", "region-setup"),  # its inline function, compiled there
    ("replicator/", "replicator"),
)
# Calls that need no IAM permission.
_FREE = frozenset({"sts:GetCallerIdentity"})
# botocore service names whose IAM prefix differs.
_IAM_PREFIX = {"iot-data": "iot"}


def identity_of_stack() -> str:
    """The identity whose code is on the current stack; ``other`` for simulators and tests."""
    files = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    ours = [
        f[len(str(_ROOT)) + 1 :].replace(os.sep, "/") for f in files if f.startswith(str(_ROOT))
    ]
    for module, identity in _IDENTITY_OF_MODULE:
        if any(f.startswith(module) for f in ours):
            return identity
    return "other"


def _recorder(calls: Counter[tuple[str, str]]) -> Callable[..., None]:
    def record(model: Any, **kwargs: Any) -> None:
        del kwargs
        service = model.service_model.service_name
        action = f"{_IAM_PREFIX.get(service, service)}:{model.name}"
        if action not in _FREE:
            calls[identity_of_stack(), action] += 1

    return record


def pytest_configure(config: pytest.Config) -> None:
    """Hook every botocore session made from now on; register the audit marker."""
    config.addinivalue_line("markers", f"{AUDIT_MARKER}: reads the record of AWS calls; runs last")
    calls: Counter[tuple[str, str]] = Counter()
    config.stash[AWS_CALLS] = calls
    try:
        import botocore.session
    except ImportError:  # the replicator extra is not installed: nothing calls AWS
        return
    original = botocore.session.Session.__init__
    record = _recorder(calls)

    def init(self: botocore.session.Session, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.register("provide-client-params", record)

    botocore.session.Session.__init__ = init  # type: ignore[method-assign]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The audit reads what every other test called: it runs after them."""
    items.sort(key=lambda item: item.get_closest_marker(AUDIT_MARKER) is not None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the record to ``IOTDR_AWS_CALLS_FILE`` when asked."""
    target = os.environ.get("IOTDR_AWS_CALLS_FILE")
    if target:
        calls = session.config.stash.get(AWS_CALLS, Counter())
        rows = [{"identity": i, "action": a, "calls": n} for (i, a), n in sorted(calls.items())]
        Path(target).write_text(json.dumps(rows, indent=1) + "\n")


@pytest.fixture
def aws_calls(request: pytest.FixtureRequest) -> Counter[tuple[str, str]]:
    """The session's record so far: (identity, IAM action) -> calls."""
    return request.config.stash[AWS_CALLS]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo the stderr handler that an in-process ``iotdr`` command installs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
