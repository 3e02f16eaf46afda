"""`iotdr sim drill`: one-device scenarios of the fleet engine on the local regions."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from simulators._drill import FAULT_KINDS, DrillOptions, drill_scenario
from simulators._errors import SimulatorError
from simulators.fleet._scenario import DnsStep, FaultStep, HealStep

if TYPE_CHECKING:
    from pathlib import Path


def _drill(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim", "drill",
         *args, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Drilled:
    """A finished ``iotdr sim drill``: its state directory, exit status and output."""

    state: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def drilled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Drilled]:
    """The ``down`` and the ``dns_flip`` drill, run at the same time (each waits on its timeline).

    Each has regions, ports and a state directory of its own.
    """
    down, flip = tmp_path_factory.mktemp("down"), tmp_path_factory.mktemp("dns_flip")
    flip_args = ["--fault", "dns_flip", "--dr-jitter", "1", "--stability-window", "1"]
    runs = {
        "down": (
            down,
            _drill("--trials", "2", "--stability-window", "1", "--state-dir", str(down)),
        ),
        "dns_flip": (flip, _drill(*flip_args, "--state-dir", str(flip))),
    }
    done: dict[str, _Drilled] = {}
    try:
        for kind, (state, process) in runs.items():
            stdout, stderr = process.communicate(timeout=200)
            done[kind] = _Drilled(state, process.returncode, stdout, stderr)
    finally:
        for _, process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return done


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_kind_is_a_scenario_with_one_device_per_trial(kind: Any) -> None:
    options = DrillOptions(faults=(kind,), trials=4, stability_window_s=7.0, dr_jitter_s=2.0)
    scenario = drill_scenario(kind, options)

    assert scenario.devices == 4
    assert scenario.regions == ("us-east-1", "us-west-2")
    failover = scenario.agent["failover"]
    assert failover["stability_window_s"] == 7.0
    probe_interval = failover["failback_probe_interval_s"]
    assert isinstance(probe_interval, float)
    assert probe_interval <= 5.0
    first, second = scenario.timeline
    assert 0 < first.at < second.at < scenario.duration_s
    if kind == "degraded":
        # The devices are meant to stay: the run ends shortly after the heal, the
        # fault lasting the options' degraded_s.
        assert second.at - first.at == options.degraded_s
        assert 0 < scenario.duration_s - second.at < 7.0 + probe_interval
    else:
        # The end leaves room for the failback: at least a probe and the whole window.
        assert scenario.duration_s - second.at >= 7.0 + probe_interval
    if kind == "dns_flip":
        assert failover["dr_mode"] is True
        assert failover["dr_jitter_s"] == 2.0
        assert first == DnsStep(at=first.at, cname="us-west-2")
        assert second == DnsStep(at=second.at, cname="us-east-1")
    else:
        assert "dr_mode" not in failover
        assert first == FaultStep(at=first.at, region="us-east-1", mode=kind)
        assert second == HealStep(at=second.at, region="us-east-1")


def test_options_refuse_an_unknown_kind_and_no_trials() -> None:
    with pytest.raises(SimulatorError, match="unknown fault kind"):
        DrillOptions(faults=("melt",))  # type: ignore[arg-type]
    with pytest.raises(SimulatorError, match="at least 1"):
        DrillOptions(trials=0)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_down_drill_moves_every_trial_and_back_without_loss(drilled: dict[str, _Drilled]) -> None:
    result = drilled["down"]
    tmp_path = result.state

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["trials"] == 2
    assert report["settings"]["stability_window_s"] == 1.0
    down = report["results"]["down"]
    assert list(report["results"]) == ["down"]
    assert down["incomplete_trials"] == 0
    assert down["lost"] == 0
    assert down["published"] > 50
    assert down["failover_s"]["p50"] is not None
    assert down["failback_s"]["max"] is not None
    # The run behind it is a fleet run on the local regions: one device per trial.
    fleet = json.loads((tmp_path / "down" / "report" / "report.json").read_text())
    assert down["report_dir"] == str(tmp_path / "down" / "report")
    assert fleet["scenario"] == "drill-down"
    assert fleet["devices"] == 2
    assert fleet["failover"]["count"] == fleet["failback"]["count"] == 2
    assert fleet["messages"]["sent"] == down["published"]
    assert [s["action"] for s in fleet["steps"]] == ["fault", "heal"]
    assert (tmp_path / "down" / "regions" / "pki").is_dir()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_dns_flip_drill_follows_the_cname_there_and_back(drilled: dict[str, _Drilled]) -> None:
    result = drilled["dns_flip"]
    tmp_path = result.state

    assert result.returncode == 0, result.stderr
    flip = json.loads(result.stdout)["results"]["dns_flip"]
    assert flip["incomplete_trials"] == 0
    assert flip["lost"] == 0
    fleet = json.loads((tmp_path / "dns_flip" / "report" / "report.json").read_text())
    assert [(s["action"], s["region"]) for s in fleet["steps"]] == [
        ("dns", "us-west-2"),
        ("dns", "us-east-1"),
    ]
    assert fleet["moved"]["count"] == 1
    assert fleet["devices_final"]["us-east-1"] == 1
    assert fleet["settings"]["agent"]["failover"]["dr_mode"] is True
