"""Shared set-up of the integration tests."""

from __future__ import annotations

import os

import pytest

_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_IOT",
    "AWS_ENDPOINT_URL_IOT_DATA_PLANE",
)


@pytest.fixture(autouse=True)
def _no_aws_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 signs with made-up keys, reads no user configuration, asks no metadata service.

    Every AWS call of these tests goes to the local regions on loopback.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in _AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
