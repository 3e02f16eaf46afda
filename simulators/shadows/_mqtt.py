"""The shadow service's MQTT side: requests on ``$aws/things/.../shadow/...``, answers as AWS.

The bridge is one paho client on the region broker's plain listener. It
subscribes to the request topics only (``get``, ``update``, ``delete``, classic
and named) and publishes only on response topics (``.../accepted``,
``.../rejected``, ``update/delta``, ``update/documents``), which have one or
two more levels than any request filter: its own publications never come back
to it, so no loop is possible. :func:`responses` is the pure part (request in,
messages out); the bridge only moves them.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from simulators.shadows._store import ShadowServiceError

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from simulators.shadows._store import (
        DeleteResult,
        GetResult,
        JsonObject,
        ShadowStore,
        UpdateResult,
    )

__all__ = [
    "REQUEST_FILTERS",
    "Message",
    "ShadowMqttBridge",
    "ShadowRequestTopic",
    "parse_request_topic",
    "responses",
    "shadow_topic",
]

logger = logging.getLogger(__name__)

Operation = Literal["get", "update", "delete"]
_OPERATIONS: frozenset[str] = frozenset({"get", "update", "delete"})

REQUEST_FILTERS: tuple[str, ...] = tuple(
    f"$aws/things/+/shadow/{prefix}{operation}"
    for prefix in ("", "name/+/")
    for operation in ("get", "update", "delete")
)
"""The topic filters the bridge subscribes to: exactly the six request topics."""

_RESPONSE_QOS = 1


@dataclass(frozen=True, slots=True)
class ShadowRequestTopic:
    """A request topic taken apart: whose shadow, which operation."""

    thing: str
    name: str | None
    operation: Operation


@dataclass(frozen=True, slots=True)
class Message:
    """An MQTT message to publish."""

    topic: str
    payload: bytes


def shadow_topic(thing: str, name: str | None, suffix: str) -> str:
    """``$aws/things/<thing>/shadow[/name/<name>]/<suffix>``."""
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{name}/{suffix}" if name is not None else f"{base}/{suffix}"


def parse_request_topic(topic: str) -> ShadowRequestTopic | None:
    """The request that ``topic`` carries, or None if it is not a request topic.

    Response topics (``.../update/accepted`` and the like) are not requests.
    """
    parts = topic.split("/")
    if len(parts) not in (5, 7) or parts[:2] != ["$aws", "things"] or parts[3] != "shadow":
        return None
    operation = parts[-1]
    if operation not in _OPERATIONS or not parts[2]:
        return None
    if len(parts) == 5:
        return ShadowRequestTopic(parts[2], None, operation)  # type: ignore[arg-type]
    if parts[4] != "name" or not parts[5]:
        return None
    return ShadowRequestTopic(parts[2], parts[5], cast("Operation", operation))


def _encode(doc: JsonObject) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def update_messages(result: UpdateResult) -> list[Message]:
    """What AWS publishes after an update: accepted, delta (if any), documents; or rejected."""
    topic = shadow_topic(result.thing, result.name, "update")
    if result.rejection is not None:
        return [Message(f"{topic}/rejected", _encode(result.rejection.payload()))]
    assert result.accepted is not None
    assert result.documents is not None
    messages = [Message(f"{topic}/accepted", _encode(result.accepted))]
    if result.delta is not None:
        messages.append(Message(f"{topic}/delta", _encode(result.delta)))
    messages.append(Message(f"{topic}/documents", _encode(result.documents)))
    return messages


def get_messages(result: GetResult) -> list[Message]:
    """``get/accepted`` with the document, or ``get/rejected``."""
    topic = shadow_topic(result.thing, result.name, "get")
    if result.rejection is not None:
        return [Message(f"{topic}/rejected", _encode(result.rejection.payload()))]
    assert result.document is not None
    return [Message(f"{topic}/accepted", _encode(result.document))]


def delete_messages(result: DeleteResult) -> list[Message]:
    """``delete/accepted`` with version and timestamp, or ``delete/rejected``."""
    topic = shadow_topic(result.thing, result.name, "delete")
    if result.rejection is not None:
        return [Message(f"{topic}/rejected", _encode(result.rejection.payload()))]
    assert result.accepted is not None
    return [Message(f"{topic}/accepted", _encode(result.accepted))]


def responses(store: ShadowStore, topic: str, payload: bytes) -> list[Message]:
    """Apply the request on ``topic`` to ``store``; the messages to publish in answer.

    Anything but a request topic gets no answer.
    """
    request = parse_request_topic(topic)
    if request is None:
        return []
    if request.operation == "update":
        return update_messages(store.update(request.thing, request.name, payload))
    if request.operation == "get":
        return get_messages(store.get(request.thing, request.name, payload))
    return delete_messages(store.delete(request.thing, request.name, payload))


class ShadowMqttBridge:
    """Serves a :class:`ShadowStore` over MQTT through the region broker's plain listener.

    paho runs the network in a thread of its own (``loop_start``) and
    reconnects by itself; subscriptions are renewed on every connect.

    Args:
        store: the region's shadows.
        host: the broker's loopback address.
        port: the broker's plain MQTT port.
        region: for logs and the client ID.
        connect_timeout_s: how long :meth:`start` waits for the subscriptions.
    """

    def __init__(
        self,
        store: ShadowStore,
        *,
        host: str,
        port: int,
        region: str = "local",
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._host = host
        self._port = port
        self._region = region
        self._timeout_s = connect_timeout_s
        self._client_id = f"iotdr-shadows-{region}-{secrets.token_hex(4)}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._pending_mid: int | None = None
        self._running = False

    def __repr__(self) -> str:
        state = "subscribed" if self._subscribed.is_set() else "not subscribed"
        return f"ShadowMqttBridge({self._region!r}, {self._host}:{self._port}, {state})"

    @property
    def connected(self) -> bool:
        """Whether the bridge is connected and subscribed."""
        return self._subscribed.is_set()

    def start(self) -> None:
        """Connect and subscribe; return once the broker granted the subscriptions.

        Raises:
            ShadowServiceError: the broker refused, was unreachable, or did not answer in time.
        """
        if self._running:
            return
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            msg = (
                f"shadow service {self._region}: cannot reach the broker at "
                f"{self._host}:{self._port}: {exc.strerror or exc}"
            )
            raise ShadowServiceError(msg, region=self._region) from exc
        self._running = True
        self._client.loop_start()
        if not self._subscribed.wait(self._timeout_s):
            self.stop()
            msg = (
                f"shadow service {self._region}: the broker at {self._host}:{self._port} "
                f"did not accept the shadow subscriptions within {self._timeout_s:g} s"
            )
            raise ShadowServiceError(msg, region=self._region)
        logger.info(
            "shadow_bridge.started",
            extra={"region": self._region, "broker": f"{self._host}:{self._port}"},
        )

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        if not self._running:
            return
        self._running = False
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()
        logger.info("shadow_bridge.stopped", extra={"region": self._region})

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish one message (queued by paho while the connection is down)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning(
                "shadow_bridge.publish_failed",
                extra={"region": self._region, "topic": topic, "rc": str(info.rc)},
            )

    def send(self, messages: list[Message]) -> None:
        """Publish responses at QoS 1, in order."""
        for message in messages:
            self.publish(message.topic, message.payload, qos=_RESPONSE_QOS)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del userdata, flags, properties
        if reason_code.is_failure:
            logger.warning(
                "shadow_bridge.refused", extra={"region": self._region, "reason": str(reason_code)}
            )
            return
        result, mid = client.subscribe([(topic, 1) for topic in REQUEST_FILTERS])
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._pending_mid = mid

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        if mid != self._pending_mid:
            return
        if any(code.is_failure for code in reason_codes):
            logger.warning(
                "shadow_bridge.subscribe_refused",
                extra={"region": self._region, "reasons": [str(c) for c in reason_codes]},
            )
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, flags, properties
        self._subscribed.clear()
        if self._running:
            logger.warning(
                "shadow_bridge.disconnected",
                extra={"region": self._region, "reason": str(reason_code)},
            )

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        del client, userdata
        try:
            answers = responses(self._store, message.topic, bytes(message.payload))
            for answer in answers:
                if answer.topic.endswith("/rejected"):  # bad input: logged once, here
                    # A get of a shadow not made yet (every device's first fetch) is
                    # routine: debug; any other rejection is the client's mistake: info.
                    routine = message.topic.endswith("/get") and b'"code":404' in answer.payload
                    logger.log(
                        logging.DEBUG if routine else logging.INFO,
                        "shadow.rejected",
                        extra={
                            "region": self._region,
                            "topic": message.topic,
                            "reply": answer.payload[:200].decode(errors="replace"),
                        },
                    )
            self.send(answers)
        except Exception:
            # paho would swallow it and the service would go quiet; keep serving, say why.
            logger.exception(
                "shadow_bridge.request_failed",
                extra={"region": self._region, "topic": message.topic},
            )
