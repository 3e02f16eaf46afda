"""The operator tools' files and numbers: bulk results, extraction, percentiles, MQTT packets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from replicator._errors import ConfigError
from replicator.tools._bulk import FORMAT, extract_certs, find_unfinished, read_results
from replicator.tools._mqtt import _packet, _string
from replicator.tools._shadows import percentile

if TYPE_CHECKING:
    from pathlib import Path


def _result(path: Path, **changes: object) -> Path:
    data: dict[str, object] = {
        "format": FORMAT, "status": "complete", "count": 1, "region": "us-east-1",
        "devices": [{"thingName": "dev-0", "certificatePem": "-----BEGIN CERTIFICATE-----\n"}],
    }  # fmt: skip
    data.update(changes)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(data))
    return path / "results.json"


@pytest.mark.parametrize(
    ("text", "reason"),
    [("{not json", "not JSON"), ("[]", "format is not"), ('{"format": "other/1"}', "format is not"),
     (json.dumps({"format": FORMAT}), "no device list")],
)  # fmt: skip
def test_a_file_that_is_not_a_bulk_result_is_refused(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        read_results(path)
    with pytest.raises(ConfigError, match=r"results\.json"):
        read_results(tmp_path / "missing" / "results.json")


def test_extract_certs_writes_one_file_per_device(tmp_path: Path) -> None:
    results = _result(tmp_path / "run", devices=[
        {"thingName": "dev-0", "certificatePem": "PEM0"},
        {"thingName": "dev-1", "certificatePem": "PEM1"},
        {"thingName": "../escape", "certificatePem": "X"},
        {"thingName": "dev-2"},
    ])  # fmt: skip
    written = extract_certs(results, tmp_path / "out")
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "dev-0.certificate.pem", "dev-1.certificate.pem"]  # fmt: skip
    assert (tmp_path / "out" / "dev-1.certificate.pem").read_text() == "PEM1"


def test_the_newest_unfinished_run_of_a_base_is_found(tmp_path: Path) -> None:
    _result(tmp_path / "dev--2026-01-01_00-00-00", status="in_progress")
    _result(tmp_path / "dev--2026-01-02_00-00-00", status="in_progress")
    _result(tmp_path / "dev--2026-01-03_00-00-00", status="complete")
    _result(tmp_path / "other--2026-01-04_00-00-00", status="in_progress")
    found = find_unfinished(tmp_path, "dev-")
    assert found is not None
    assert found.name == "dev--2026-01-02_00-00-00"
    assert find_unfinished(tmp_path, "none-") is None


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([3.0], 0.5) == 3.0
    assert percentile([], 0.5) is None


def test_mqtt_packets_encode_their_remaining_length() -> None:
    assert _string("ab") == b"\x00\x02ab"
    assert _packet(0x30, b"x" * 5) == b"\x30\x05" + b"x" * 5
    big = _packet(0x30, b"x" * 200)
    assert big[:3] == b"\x30\xc8\x01"
    assert len(big) == 203
