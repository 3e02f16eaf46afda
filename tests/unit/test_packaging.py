"""The distribution's shape: import boundaries and the CLI's face."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter where every package that only the extras bring in
# (and our other packages) cannot be imported, so a stray `import boto3` or
# `import simulators` anywhere under device_agent fails here even though the
# test machine has it all. (dnspython may import its own optional helpers such
# as idna or httpx when they are installed; those are its business.)
_ISOLATED_IMPORT = """
import importlib, pkgutil, sys
extras_only = {
    "simulators", "replicator", "boto3", "botocore", "s3transfer", "moto", "cryptography",
    "yaml", "rich", "matplotlib", "amqtt", "awscrt", "awsiot", "uvloop", "werkzeug",
    "flask", "jinja2", "responses", "xmltodict", "pytest", "hypothesis",
}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in extras_only:
            raise ImportError(f"device_agent imported {name!r}, not a required dependency")
        return None

sys.meta_path.insert(0, Refuse())
import device_agent
for info in pkgutil.walk_packages(device_agent.__path__, "device_agent."):
    if info.name != "device_agent.cli":
        importlib.import_module(info.name)
assert "click" not in sys.modules, "the library must not need click; only the CLI does"
importlib.import_module("device_agent.cli")
print("ok")
"""


def test_device_agent_imports_only_stdlib_and_its_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | {"dns", "paho", "click", "device_agent", "__future__"}
    assert _imported_roots("device_agent") <= allowed


def test_device_agent_imports_with_only_its_required_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _ISOLATED_IMPORT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _imported_roots(package: str) -> set[str]:
    roots: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("device_agent", {"simulators", "replicator", "boto3", "botocore", "moto", "cryptography"}),
        ("replicator", {"simulators", "moto"}),
    ],
)
def test_import_direction(package: str, forbidden: set[str]) -> None:
    assert not (_imported_roots(package) & forbidden)


def test_help_lists_the_four_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    commands = out.split("Commands:")[1].split()
    for group in ("agent", "replicator", "tools", "sim"):
        assert group in commands
    assert commands.index("agent") < commands.index("sim")


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from importlib.metadata import entry_points;"
                "print(sorted(e.name for e in entry_points(group='iotdr.commands')))"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "['agent', 'replicator', 'sim', 'tools']"


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import metadata

    from device_agent import cli

    broken = metadata.EntryPoint(name="sim", value="no_such_module_xyz:sim", group="iotdr.commands")
    monkeypatch.setattr(cli._EntryPointGroup, "_cache", {})
    real = cli._EntryPointGroup._entry_points
    monkeypatch.setattr(
        cli._EntryPointGroup, "_entry_points", lambda self: {**real(self), "sim": broken}
    )
    assert main(["sim", "dns"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'iotdr[sim]'" in err
