"""``configure_logging``: what reaches stderr at each level."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import boto3
import pytest

from device_agent.cli import configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator

_LIBRARIES = ("botocore", "boto3", "urllib3")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes the process's loggers: put them back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in _LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def _env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.mark.usefixtures("_env_credentials")
@pytest.mark.parametrize("json_lines", [False, True])
def test_botocore_credentials_chatter_is_not_logged_at_info(
    json_lines: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", json_lines=json_lines)
    boto3.session.Session(region_name="us-east-1").client("iot", endpoint_url="http://127.0.0.1:1")
    logging.getLogger("replicator.feed").info("replicator.feed.connected")
    err = capsys.readouterr().err
    assert "Found credentials" not in err
    assert "replicator.feed.connected" in err  # our own info lines still show


@pytest.mark.parametrize("name", _LIBRARIES)
def test_library_warnings_still_show_at_info(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    logger = logging.getLogger(f"{name}.somewhere")
    logger.info("library chatter")
    logger.warning("library warning")
    err = capsys.readouterr().err
    assert "library chatter" not in err
    assert "library warning" in err


@pytest.mark.usefixtures("_env_credentials")
def test_debug_shows_the_libraries_again(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    configure_logging("debug")  # a later call with debug undoes the quieting
    boto3.session.Session(region_name="us-east-1").client("iot", endpoint_url="http://127.0.0.1:1")
    assert "Found credentials in environment variables." in capsys.readouterr().err
