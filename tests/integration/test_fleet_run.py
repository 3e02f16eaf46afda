"""`iotdr sim run` from the shell: a full run, Ctrl-C in the middle, and one clear line per error.

Every test runs the real command in a process of its own (``python -m
device_agent.cli sim run``), with small scenarios on the local regions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_COMMAND = [sys.executable, "-m", "device_agent.cli", "--log-level", "warning", "sim", "run"]
_PNG = b"\x89PNG\r\n\x1a\n"

_QUICK = """\
name: quick
description: the primary goes down while devices are being created, then recovers
devices: {devices}
duration_s: {duration}
regions: [us-east-1, us-west-2]
replication: complete
fleet: {{telemetry_interval_s: 1.0, shadow_interval_s: 5, start_spread_s: 2}}
agent: {{failover: {{stability_window_s: 2, failback_probe_interval_s: 3, failback_spread_s: 2}}}}
timeline:
  - {{at: 3, fault: {{region: us-east-1, mode: down}}}}
  - {{at: 4, create_devices: 3}}
  - {{at: 10, heal: {{region: us-east-1}}}}
"""
# The failback after the heal at 10: the first probe (3 s, +-20 % jitter), the next one closes
# the 2 s window, the spread, the connect: 10 s at most, so a full run ends at _QUICK_END.
_QUICK_END = 26


def _scenario(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _sim_run(
    *args: str, timeout: float = 200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


# -- a full run -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_full_run_writes_a_consistent_report(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, _QUICK.format(devices=12, duration=_QUICK_END))
    report_dir = tmp_path / "report"

    result = _sim_run("--scenario", str(scenario), "--report-dir", str(report_dir), "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads((report_dir / "report.json").read_text())
    assert json.loads(result.stdout) == report
    # Every key of the report, with numbers that agree with each other.
    assert report["scenario"] == "quick"
    assert report["seed"] == 0
    assert report["duration_s"] >= _QUICK_END
    assert report["devices"] == 15  # 12 and the 3 created during the run
    for kind in ("failover", "failback"):
        assert set(report[kind]) >= {"count", "p50_s", "p95_s", "p99_s", "max_s"}
        assert report[kind]["count"] == report["present"] == 12
        assert 0 <= report[kind]["p50_s"] <= report[kind]["p95_s"] <= report[kind]["max_s"]
    messages = report["messages"]
    assert set(messages) >= {"sent", "delivered", "lost", "duplicated"}
    assert messages["lost"] == 0
    assert messages["delivered"] == messages["sent"] > 0
    assert set(report["connects"]) == {"us-east-1", "us-west-2"}
    for door in report["connects"].values():
        assert set(door) >= {"total", "peak_per_s", "refused"}
    # The secondary admitted every present device once at least; the primary, every one.
    assert report["connects"]["us-west-2"]["total"] >= 12
    assert report["connects"]["us-east-1"]["total"] >= 15
    assert sum(report["devices_final"].values()) == 15
    assert report["devices_final"]["us-east-1"] == 15
    assert report["shadows"]["checked"] == 15
    assert report["shadows"]["diverged"] == 0
    assert report["verdict"]["ok"] is True
    # The Markdown starts with the verdict; the CSV and the plots are there.
    markdown = (report_dir / "report.md").read_text().splitlines()
    assert markdown[0] == "# Fleet run: quick"
    assert "PASS" in markdown[2]
    csv = (report_dir / "timeline.csv").read_text().splitlines()
    assert len(csv) > _QUICK_END  # a header and a row per second
    for plot in ("connected.png", "cdf.png", "messages.png"):
        assert (report_dir / plot).read_bytes().startswith(_PNG), plot


# -- Ctrl-C -------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def _descendants(pid: int) -> set[int]:
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of its stat), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _sockets(pids: set[int], states: dict[str, set[str]]) -> set[tuple[str, str, int]]:
    """The (protocol, host, port) of ``pids``' IPv4 sockets in one of ``states`` per protocol."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            inodes |= _socket_inodes(pid)
        except OSError:
            continue
    found: set[tuple[str, str, int]] = set()
    for protocol, wanted in states.items():
        for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] not in wanted or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            host = socket.inet_ntoa(bytes.fromhex(address)[::-1])
            found.add((protocol, host, int(port, 16)))
    return found


def _listening(pids: set[int]) -> set[tuple[str, str, int]]:
    """What ``pids`` listen on: TCP LISTEN, bound UDP."""
    return _sockets(pids, {"tcp": {"0A"}, "udp": {"07"}})


def _device_connections(pids: set[int]) -> int:
    """Established TCP connections of the device hosts among ``pids``."""
    hosts = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"simulators.fleet._host" in Path(f"/proc/{pid}/cmdline").read_bytes():
                hosts.add(pid)
    return len(_sockets(hosts, {"tcp": {"01"}}))


def _free(protocol: str, host: str, port: int) -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


_INTERRUPTED_DEVICES = 20


@dataclass(frozen=True, slots=True)
class _Interrupted:
    """A run stopped by SIGINT to its process group, and what it had started."""

    folder: Path
    returncode: int
    stdout: str
    stderr: str
    started: dict[int, str]
    ports: set[tuple[str, str, int]]
    survivors: list[int]


def _run_and_interrupt(folder: Path) -> _Interrupted:
    scenario = _scenario(folder, _QUICK.format(devices=_INTERRUPTED_DEVICES, duration=120))
    process = subprocess.Popen(
        [*_COMMAND, "--scenario", str(scenario), "--report-dir", str(folder / "report"),
         "--state-dir", str(folder / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    started: dict[int, str] = {}
    ports: set[tuple[str, str, int]] = set()
    try:
        # The timeline starts once every device is connected (each holds a connection to
        # a door); a few seconds later the run is in the middle of its timeline.
        ready_at: float | None = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and process.poll() is None:
            pids = _descendants(process.pid)
            for pid in pids:
                if pid not in started and (start := _start_time(pid)) is not None:
                    started[pid] = start
            ports |= _listening({process.pid, *pids})
            if ready_at is None and _device_connections(pids) >= _INTERRUPTED_DEVICES:
                ready_at = time.monotonic()
            if ready_at is not None and time.monotonic() - ready_at > 6:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        assert ready_at is not None, "the devices never connected"
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # What the run left behind is the finding; then each of them is stopped, by PID
        # (its services run in sessions of their own, out of reach of the killpg above).
        survivors = [pid for pid, start in started.items() if _start_time(pid) == start]
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return _Interrupted(folder, process.returncode, stdout, stderr, started, ports, survivors)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> _Interrupted:
    return _run_and_interrupt(tmp_path_factory.mktemp("interrupted"))


@pytest.mark.timeout(240)
def test_ctrl_c_in_the_middle_leaves_no_process_or_port_behind(interrupted: _Interrupted) -> None:
    # Brokers, control plane, replicator and device hosts at least.
    assert len(interrupted.started) >= 5, interrupted.started
    assert interrupted.survivors == []
    assert len(interrupted.ports) >= 5, interrupted.ports
    taken = [entry for entry in sorted(interrupted.ports) if not _free(*entry)]
    assert taken == []


@pytest.mark.timeout(240)
def test_ctrl_c_in_the_middle_is_one_line_and_a_partial_report(
    interrupted: _Interrupted,
) -> None:
    assert interrupted.returncode == 2, interrupted.stderr
    assert "Traceback" not in interrupted.stderr + interrupted.stdout
    lines = interrupted.stderr.strip().splitlines()
    assert len(lines) == 1, interrupted.stderr
    assert "interrupted" in lines[0]
    report_dir = interrupted.folder / "report"
    assert str(report_dir) in lines[0]
    report = json.loads((report_dir / "report.json").read_text())
    assert any("interrupted" in note for note in report["notes"])
    assert 0 < report["duration_s"] < 120


# -- one clear line each ------------------------------------------------------------------------

_BAD = {
    "yaml": ("name: broken\ntimeline: [\n", "not valid YAML"),
    "fault_mode": (
        _QUICK.format(devices=5, duration=40).replace("mode: down", "mode: melt"),
        "unknown fault mode 'melt'",
    ),
    "region": (
        _QUICK.format(devices=5, duration=40).replace(
            "heal: {region: us-east-1}", "heal: {region: eu-west-1}"
        ),
        "region 'eu-west-1' is not one of this scenario's",
    ),
}


def _one_clear_line(result: subprocess.CompletedProcess[str], expected: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    return lines[0]


@pytest.mark.parametrize("case", sorted(_BAD))
def test_a_bad_scenario_file_is_one_line_before_anything_starts(tmp_path: Path, case: str) -> None:
    text, expected = _BAD[case]
    scenario = _scenario(tmp_path, text, f"{case}.yaml")
    state = tmp_path / "state"

    result = _sim_run(
        "--scenario", str(scenario), "--report-dir", str(tmp_path / "report"),
        "--state-dir", str(state), timeout=60,
    )  # fmt: skip

    line = _one_clear_line(result, expected)
    assert str(scenario) in line
    assert "line " in line
    assert not state.exists()
    assert not (tmp_path / "report").exists()


def test_an_unknown_builtin_is_one_line_naming_the_builtins(tmp_path: Path) -> None:
    result = _sim_run(
        "--scenario", "no-such-scenario", "--state-dir", str(tmp_path / "state"), timeout=60
    )

    line = _one_clear_line(result, "unknown scenario 'no-such-scenario'")
    assert "region-outage" in line
    assert not (tmp_path / "state").exists()


def test_a_report_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "report"
    taken.write_text("not a folder")

    result = _sim_run(
        "--scenario", "region-outage", "--report-dir", str(taken),
        "--state-dir", str(tmp_path / "state"), timeout=60,
    )  # fmt: skip

    _one_clear_line(result, "is a file")
    assert not (tmp_path / "state").exists()
    assert taken.read_text() == "not a folder"


@pytest.mark.timeout(120)
def test_a_missing_mosquitto_is_one_line(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, _QUICK.format(devices=2, duration=20))
    # mosquitto_binary() also looks in /usr/sbin (Debian's place, often not on PATH), so
    # an empty PATH does not hide an installed mosquitto: the child is told it is absent.
    hide = (
        "import sys; import simulators._broker as b; b.mosquitto_binary = lambda: None; "
        "from device_agent.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide, "--log-level", "warning", "sim", "run",
         "--scenario", str(scenario), "--broker", "mosquitto",
         "--report-dir", str(tmp_path / "report"), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=100, check=False,
        env={**os.environ, "PATH": str(tmp_path)},
    )  # fmt: skip

    line = _one_clear_line(result, "mosquitto is not installed")
    assert "amqtt" in line


@pytest.mark.timeout(60)
def test_a_port_taken_is_one_line(tmp_path: Path) -> None:
    # `sim run` listens on free ports only, so it cannot meet a taken one; the local
    # regions it is built on can, when asked for a port (`sim regions up`).
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "sim", "regions", "up",
             "--mqtt-port", str(port), "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=50, check=False,
        )  # fmt: skip

    line = _one_clear_line(result, f"127.0.0.2:{port} is already in use")
    assert "choose another port" in line
