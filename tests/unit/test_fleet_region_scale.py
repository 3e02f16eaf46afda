"""How many door processes and brokers a region gets for a fleet of a given size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulators.fleet._regions_stage import (
    DEVICES_PER_BROKER,
    DEVICES_PER_DOOR_PROCESS,
    region_scale,
)


def test_small_fleets_keep_the_door_in_a_thread_and_one_broker() -> None:
    assert region_scale(1) == (0, 1)
    assert region_scale(1_000) == (0, 1)
    assert region_scale(1_500) == (0, 1)


def test_large_fleets_get_processes_and_leaf_brokers() -> None:
    assert region_scale(1_501) == (2, 1)
    assert region_scale(5_000) == (2, 1)
    assert region_scale(10_000) == (2, 1)
    assert region_scale(20_000) == (3, 2)


def test_given_values_win() -> None:
    assert region_scale(20_000, door_processes=0, broker_shards=1) == (0, 1)
    assert region_scale(10, door_processes=4, broker_shards=3) == (4, 3)


@given(st.integers(1_501, 200_000))
def test_no_process_holds_more_than_its_share(devices: int) -> None:
    doors, brokers = region_scale(devices)
    assert doors >= 2
    assert devices / doors <= DEVICES_PER_DOOR_PROCESS
    assert devices / brokers <= DEVICES_PER_BROKER
    # and no more processes than needed
    assert doors == 2 or devices / (doors - 1) > DEVICES_PER_DOOR_PROCESS
    assert brokers == 1 or devices / (brokers - 1) > DEVICES_PER_BROKER
