"""The paho transport's housekeeping: one task per loop, each connection at its own pace."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from paho.mqtt.enums import MQTTErrorCode

from device_agent import _paho
from device_agent._paho import _Housekeeping

if TYPE_CHECKING:
    import pytest


class _Counting:
    def __init__(self, *, fails: bool = False) -> None:
        self.calls = 0
        self.fails = fails

    def loop_misc(self) -> MQTTErrorCode:
        self.calls += 1
        if self.fails:
            msg = "this connection's housekeeping breaks"
            raise RuntimeError(msg)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class _Closed(_Counting):
    def loop_misc(self) -> MQTTErrorCode:
        self.calls += 1
        return MQTTErrorCode.MQTT_ERR_NO_CONN


async def test_each_connection_is_checked_every_tenth_of_its_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_paho, "_MISC_INTERVAL_S", 0.001)
    keeping = _Housekeeping(asyncio.get_running_loop())
    fast, slow, broken, closed = _Counting(), _Counting(), _Counting(fails=True), _Closed()
    keeping.add(fast, 0.01)  # type: ignore[arg-type]  # every tick
    keeping.add(slow, 0.06)  # type: ignore[arg-type]  # every 6th tick
    keeping.add(broken, 0.01)  # type: ignore[arg-type]
    keeping.add(closed, 0.01)  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        while fast.calls < 60:  # noqa: ASYNC110 - counted by the housekeeping task
            await asyncio.sleep(0.001)
    assert abs(slow.calls - fast.calls / 6) <= 1
    assert broken.calls == 1  # raised once: dropped, and the others went on
    assert closed.calls == 1  # closed: dropped
    keeping.discard(fast)  # type: ignore[arg-type]
    task = keeping._task
    assert task is not None  # slow is still there
    keeping.discard(slow)  # type: ignore[arg-type]
    assert keeping._task is None  # the last connection went: the task is cancelled at once
    await asyncio.sleep(0)
    assert task.cancelled()
    calls = fast.calls
    await asyncio.sleep(0.01)
    assert fast.calls == calls


async def test_one_housekeeping_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert _Housekeeping.of(loop) is _Housekeeping.of(loop)
