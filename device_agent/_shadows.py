"""Fetching the device's shadows after a region switch, over MQTT.

The session in a new region is fresh, and the shadows there may differ from
what the device last saw (the replicator copied them, the application changed
them during the outage). After every move the agent gets the classic shadow
and the configured named shadows (``$aws/things/<thing>/shadow[/name/<n>]/get``)
and hands each document to the application to reconcile its local state.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from device_agent._transport import TransportClosedError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from device_agent._transport import Transport

__all__ = ["ShadowFetcher", "ShadowSnapshot", "shadow_topic"]


def shadow_topic(thing: str, name: str | None, operation: str) -> str:
    """``$aws/things/<thing>/shadow[/name/<name>]/<operation>``."""
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{name}/{operation}" if name else f"{base}/{operation}"


@dataclass(frozen=True, slots=True)
class ShadowSnapshot:
    """One shadow as fetched in one region.

    Attributes:
        region: where it was fetched.
        name: the named shadow, or None for the classic shadow.
        document: the shadow document (``state``, ``metadata``, ``version``, ...),
            or None when the shadow does not exist there or the fetch failed.
        error: None on success (or "does not exist"), else why the fetch failed.
    """

    region: str
    name: str | None
    document: dict[str, Any] | None
    error: str | None = None

    @property
    def version(self) -> int | None:
        """The document's version, if any."""
        return None if self.document is None else self.document.get("version")


class ShadowFetcher:
    """Gets a thing's classic and named shadows through a live connection."""

    def __init__(self, thing: str, named: Sequence[str] = ()) -> None:
        self.thing = thing
        self.names: tuple[str | None, ...] = (None, *named)
        self._waiting: dict[str, asyncio.Future[tuple[bool, dict[str, Any]]]] = {}
        self._replies = {
            shadow_topic(thing, name, f"get/{outcome}"): (name, outcome == "accepted")
            for name in self.names
            for outcome in ("accepted", "rejected")
        }

    def __repr__(self) -> str:
        return f"ShadowFetcher(thing={self.thing!r}, shadows={len(self.names)})"

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Feed received messages; True if it was a shadow reply (and is consumed)."""
        reply = self._replies.get(topic)
        if reply is None:
            return False
        name, accepted = reply
        try:
            document = json.loads(payload) if payload else {}
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            document = {"message": "reply is not JSON"}
        if not isinstance(document, dict):
            document = {"message": "reply is not a JSON object"}
        token = document.get("clientToken")
        key = token if isinstance(token, str) and token in self._waiting else None
        if key is None:  # a reply without our token: give it to the oldest waiter of that shadow
            key = next((k for k in self._waiting if k.startswith(f"{name}:")), None)
        if key is not None:
            future = self._waiting.pop(key)
            if not future.done():
                future.set_result((accepted, document))
        return True

    async def fetch(
        self, transport: Transport, region: str, timeout_s: float
    ) -> list[ShadowSnapshot]:
        """Get every shadow; failures are reported in the snapshots, never raised."""
        try:
            for name in self.names:
                for outcome in ("accepted", "rejected"):
                    await transport.subscribe(shadow_topic(self.thing, name, f"get/{outcome}"), 1)
        except TransportClosedError as exc:
            return [
                ShadowSnapshot(region, name, None, f"connection lost: {exc}") for name in self.names
            ]
        return list(
            await asyncio.gather(
                *(self._get(transport, region, name, timeout_s) for name in self.names)
            )
        )

    async def _get(
        self, transport: Transport, region: str, name: str | None, timeout_s: float
    ) -> ShadowSnapshot:
        token = f"{name}:{os.urandom(6).hex()}"
        future: asyncio.Future[tuple[bool, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[token] = future
        try:
            async with asyncio.timeout(timeout_s):
                await transport.publish(
                    shadow_topic(self.thing, name, "get"),
                    json.dumps({"clientToken": token}).encode(),
                    1,
                )
                accepted, document = await future
        except TimeoutError:
            return ShadowSnapshot(region, name, None, f"no reply in {timeout_s:g} s")
        except TransportClosedError as exc:
            return ShadowSnapshot(region, name, None, f"connection lost: {exc}")
        finally:
            self._waiting.pop(token, None)
        if accepted:
            return ShadowSnapshot(region, name, document)
        if document.get("code") == 404:
            return ShadowSnapshot(region, name, None)
        return ShadowSnapshot(region, name, None, f"rejected: {document.get('message', document)}")
