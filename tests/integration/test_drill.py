"""The main job, end to end: `iotdr sim drill` on its embedded defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def test_drill_reports_a_failover_without_loss(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim", "drill",
         "--stability-window", "1", "--state-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    down = report["results"]["down"]
    assert down["lost"] == 0
    assert down["incomplete_trials"] == 0
    assert down["published"] > 50
    assert down["failover_s"]["max"] < 5.0
    assert report["settings"]["stability_window_s"] == 1.0
    assert (tmp_path / "pki" / "fleet-ca.crt").exists()
