"""A local region's Device Shadow service: AWS IoT shadows over MQTT and the iot-data API.

:class:`ShadowStore` holds the documents and applies AWS's rules without I/O;
:class:`ShadowMqttBridge` answers the ``$aws/things/.../shadow/...`` topics on
the region broker; :class:`IotDataHttpServer` serves the HTTP API that boto3's
``iot-data`` client calls; :class:`ShadowService` runs the lot for one region
(``python -m simulators.shadows`` from a shell).
"""

from __future__ import annotations

from simulators.shadows._http import ERROR_TYPES, HttpResponse, IotDataApi, IotDataHttpServer
from simulators.shadows._mqtt import (
    REQUEST_FILTERS,
    Message,
    ShadowMqttBridge,
    ShadowRequestTopic,
    parse_request_topic,
    responses,
    shadow_topic,
)
from simulators.shadows._service import ShadowService, require_loopback
from simulators.shadows._store import (
    DELETED_VERSION_RETENTION_S,
    MAX_STATE_BYTES,
    DeleteResult,
    GetResult,
    NamedShadowPage,
    Rejection,
    ShadowServiceError,
    ShadowStore,
    UpdateResult,
)

__all__ = [
    "DELETED_VERSION_RETENTION_S",
    "ERROR_TYPES",
    "MAX_STATE_BYTES",
    "REQUEST_FILTERS",
    "DeleteResult",
    "GetResult",
    "HttpResponse",
    "IotDataApi",
    "IotDataHttpServer",
    "Message",
    "NamedShadowPage",
    "Rejection",
    "ShadowMqttBridge",
    "ShadowRequestTopic",
    "ShadowService",
    "ShadowServiceError",
    "ShadowStore",
    "UpdateResult",
    "parse_request_topic",
    "require_loopback",
    "responses",
    "shadow_topic",
]
