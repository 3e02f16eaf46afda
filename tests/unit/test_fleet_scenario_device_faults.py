"""Scenario format: device-side faults (``fault: {side: devices, ...}``) and heals by side."""

from __future__ import annotations

import pytest

from simulators.fleet._scenario import (
    DEVICE_FAULT_MODES,
    DeviceFaultStep,
    FaultStep,
    HealStep,
    ScenarioError,
    parse_scenario,
)

BASE = """\
name: t
devices: 10
duration_s: 100
regions: [us-east-1, us-west-2]
timeline:
"""


def _steps(*lines: str) -> tuple[object, ...]:
    return parse_scenario(BASE + "".join(f"  - {line}\n" for line in lines)).timeline


def test_a_device_side_fault_takes_every_device_by_default() -> None:
    assert _steps("{at: 30, fault: {side: devices, region: us-east-1, mode: blackhole}}") == (
        DeviceFaultStep(at=30.0, region="us-east-1", mode="blackhole", fraction=1.0),
    )


@pytest.mark.parametrize("mode", DEVICE_FAULT_MODES)
def test_every_device_side_mode_parses_with_a_fraction(mode: str) -> None:
    (step,) = _steps(f"{{at: 1, fault: {{side: devices, region: us-west-2, mode: {mode}, "
                     "fraction: 0.25}}")  # fmt: skip
    assert step == DeviceFaultStep(at=1.0, region="us-west-2", mode=mode, fraction=0.25)  # type: ignore[arg-type]
    assert set(DEVICE_FAULT_MODES) == {"refuse", "reset", "blackhole"}


def test_side_door_is_the_default_and_todays_fault() -> None:
    door = _steps("{at: 5, fault: {side: door, region: us-east-1, mode: down}}")
    default = _steps("{at: 5, fault: {region: us-east-1, mode: down}}")
    assert door == default == (FaultStep(at=5.0, region="us-east-1", mode="down"),)


def test_a_fraction_of_one_is_allowed() -> None:
    (step,) = _steps("{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: 1}}")
    assert step == DeviceFaultStep(at=5.0, region="us-east-1", mode="reset")


@pytest.mark.parametrize(
    ("side", "expected"), [("", None), (", side: devices", "devices"), (", side: door", "door")]
)
def test_heal_by_side(side: str, expected: str | None) -> None:
    (step,) = _steps(f"{{at: 5, heal: {{region: us-east-1{side}}}}}")
    assert step == HealStep(at=5.0, region="us-east-1", side=expected)  # type: ignore[arg-type]


# (step, field path, words in the message); every step is on line 6.
ERRORS: list[tuple[str, str, str, str]] = [
    (
        "unknown side",
        "{at: 5, fault: {side: cloud, region: us-east-1, mode: down}}",
        "timeline[0].fault.side",
        "unknown side 'cloud' (known: door, devices)",
    ),
    (
        "door mode on the devices' side",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: down}}",
        "timeline[0].fault.mode",
        "unknown device-side fault mode 'down' (known: refuse, reset, blackhole)",
    ),
    (
        "device mode at the door",
        "{at: 5, fault: {region: us-east-1, mode: refuse}}",
        "timeline[0].fault.mode",
        "unknown fault mode 'refuse' (known: down, blackhole",
    ),
    (
        "fraction at the door",
        "{at: 5, fault: {region: us-east-1, mode: down, fraction: 0.5}}",
        "timeline[0].fault.fraction",
        "fraction needs side: devices",
    ),
    (
        "fraction zero",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: 0}}",
        "timeline[0].fault.fraction",
        "must be more than zero",
    ),
    (
        "fraction negative",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: -0.5}}",
        "timeline[0].fault.fraction",
        "must be more than zero",
    ),
    (
        "fraction above one",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: 1.5}}",
        "timeline[0].fault.fraction",
        "must be at most 1 (the share of the devices), not 1.5",
    ),
    (
        "fraction not a number",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: half}}",
        "timeline[0].fault.fraction",
        "must be a number, not 'half'",
    ),
    (
        "fraction true",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, fraction: true}}",
        "timeline[0].fault.fraction",
        "must be a number, not True",
    ),
    (
        "unknown key in a fault",
        "{at: 5, fault: {side: devices, region: us-east-1, mode: reset, share: 0.5}}",
        "timeline[0].fault.share",
        "unknown key (allowed: region, mode, side, fraction)",
    ),
    (
        "unknown region on the devices' side",
        "{at: 5, fault: {side: devices, region: eu-west-1, mode: reset}}",
        "timeline[0].fault.region",
        "region 'eu-west-1' is not one of this scenario's",
    ),
    (
        "missing mode on the devices' side",
        "{at: 5, fault: {side: devices, region: us-east-1}}",
        "timeline[0].fault",
        "missing mode",
    ),
    (
        "unknown heal side",
        "{at: 5, heal: {region: us-east-1, side: both}}",
        "timeline[0].heal.side",
        "unknown side 'both' (known: door, devices)",
    ),
    (
        "unknown key in a heal",
        "{at: 5, heal: {region: us-east-1, mode: blackhole}}",
        "timeline[0].heal.mode",
        "unknown key (allowed: region, side)",
    ),
]


@pytest.mark.parametrize(
    ("step", "path", "words"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS]
)
def test_errors_are_one_line_with_line_and_field(step: str, path: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE + f"  - {step}\n", source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.line == 6, message
    assert info.value.path == path
    assert message.startswith(f"scenario my.yaml line 6: {path}: "), message
    assert words in message, message


def test_a_device_fault_step_checks_its_fraction() -> None:
    with pytest.raises(ScenarioError, match=r"fraction: must be more than 0 and at most 1"):
        DeviceFaultStep(at=0.0, region="us-east-1", mode="reset", fraction=0.0)
