"""Virtual devices follow desired state: a delta from the cloud becomes their reported state.

In the in-memory world on virtual time: three devices connect to the primary;
the cloud side writes ``desired`` into each shadow (as an application would
through the iot-data API); the shadow service publishes the delta; every device
takes it over and reports it, so the delta is gone and the reported state
holds the new value, next to the device's own ``seq``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from device_agent.testing import run_virtual
from simulators.fleet._memory import MemoryFleet, MemoryStage
from simulators.fleet._scenario import parse_scenario
from simulators.shadows._mqtt import responses

if TYPE_CHECKING:
    from pathlib import Path

SCENARIO = """
name: desired
devices: 3
duration_s: 60
regions: [us-east-1, us-west-2]
replication: off
fleet: {telemetry_interval_s: 5, shadow_interval_s: 20, start_spread_s: 1}
timeline: []
"""


def test_devices_take_over_desired_state_and_report_it(tmp_path: Path) -> None:
    scenario = parse_scenario(SCENARIO)

    async def main() -> dict[str, dict[str, Any]]:
        stage = MemoryStage(scenario, folder=tmp_path)
        fleet = MemoryFleet(stage, scenario)
        stage.start()
        try:
            await fleet.start(stage.provision(scenario.devices))
            for _ in range(200):  # bounded: 20 virtual seconds
                if len(stage.network.connected("us-east-1")) == scenario.devices:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # the delta subscription is granted after the CONNACK
            store = stage.apis["us-east-1"].shadows
            for n, name in enumerate(fleet.devices):
                topic = f"$aws/things/{name}/shadow/update"
                request = json.dumps({"state": {"desired": {"led": f"on-{n}"}}}).encode()
                for answer in responses(store, topic, request):
                    stage.network.publish("us-east-1", answer.topic, answer.payload, 1)
            await asyncio.sleep(5)
            return {name: store.get(name).document or {} for name in fleet.devices}
        finally:
            await fleet.close()
            await stage.close()

    documents = run_virtual(main())

    assert len(documents) == 3
    for n, document in enumerate(documents.values()):
        state = document["state"]
        assert state["reported"]["led"] == f"on-{n}"
        assert state["reported"]["seq"] >= 1
        assert "delta" not in state
