"""A large fleet's devices spread over several loopback source addresses."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from simulators.fleet._host import HostSpec, agent_config, source_addresses

if TYPE_CHECKING:
    from pathlib import Path


def test_up_to_ten_thousand_devices_use_the_systems_choice() -> None:
    assert source_addresses(1) == ()
    assert source_addresses(10_000) == ()


def test_beyond_one_address_per_ten_thousand() -> None:
    assert source_addresses(10_001) == ("127.0.1.1", "127.0.1.2")
    assert source_addresses(20_000) == ("127.0.1.1", "127.0.1.2")
    assert source_addresses(25_000) == ("127.0.1.1", "127.0.1.2", "127.0.1.3")


def _spec(tmp_path: Path, addresses: tuple[str, ...]) -> HostSpec:
    return HostSpec.from_json(
        {
            "t0": 0.0,
            "index": 0,
            "state_dir": str(tmp_path),
            "ca": str(tmp_path / "ca.pem"),
            "dns": ["127.0.0.1", 53],
            "device_name": "iot.iotdr.test",
            "endpoints": {"us-east-1": ["a.iot.us-east-1.iotdr.test", 8883]},
            "source_addresses": list(addresses),
        }
    )


def _device(name: str, tmp_path: Path) -> dict[str, str]:
    return {"name": name, "cert": str(tmp_path / f"{name}.crt"), "key": str(tmp_path / "k")}


def test_each_device_binds_to_one_address_always_the_same(tmp_path: Path) -> None:
    spec = _spec(tmp_path, source_addresses(20_000))
    names = [f"sim-{n:05d}" for n in range(1, 401)]
    chosen = {n: agent_config(spec, _device(n, tmp_path)).mqtt.source_address for n in names}
    assert set(chosen.values()) == {"127.0.1.1", "127.0.1.2"}
    assert min(Counter(chosen.values()).values()) > 150  # about half each
    again = {n: agent_config(spec, _device(n, tmp_path)).mqtt.source_address for n in names}
    assert again == chosen


def test_no_addresses_no_binding(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ())
    assert agent_config(spec, _device("sim-00001", tmp_path)).mqtt.source_address is None
