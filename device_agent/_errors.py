"""The device agent's exceptions: one root, families under it."""

from __future__ import annotations

from typing import Any, Literal


class DeviceAgentError(Exception):
    """Root of every error the device agent raises on purpose.

    ``exit_code`` is what the ``iotdr`` command exits with when the error
    reaches it: 2 for usage, configuration and environment problems.
    """

    exit_code: int = 2


class ConfigError(DeviceAgentError):
    """The agent's configuration is invalid."""


class OutboxError(DeviceAgentError):
    """The outbox cannot be opened or used: a bad path, not an outbox, disk errors.

    Attributes:
        path: Where the outbox lives (``":memory:"`` for an in-memory one).
        reason: What went wrong, one line.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"outbox {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[OutboxError], tuple[Any, ...]]:
        return (type(self), (self.path, self.reason))


class OutboxFullError(OutboxError):
    """The outbox already holds ``capacity`` messages and its overflow policy is ``"reject"``.

    Nothing was written. The caller decides what to do with the message: drop
    it, or hold it until a PUBACK makes room.

    Attributes:
        path: Where the outbox lives (``":memory:"`` for an in-memory one).
        capacity: How many messages it holds at most.
    """

    def __init__(self, path: str, capacity: int) -> None:
        super().__init__(
            path, f"full ({capacity} messages awaiting PUBACK) and its overflow policy is 'reject'"
        )
        self.capacity = capacity

    def __reduce__(self) -> tuple[type[OutboxError], tuple[Any, ...]]:
        # The default rebuilds from ``args`` (the message), which this
        # constructor does not take; rebuild from the fields instead.
        return (type(self), (self.path, self.capacity))


class MessageTooLargeError(DeviceAgentError):
    """A message is larger than the broker accepts; nothing was stored or sent.

    AWS IoT Core refuses a PUBLISH over 128 KB (and a refused publish is a
    dropped connection on MQTT 3.1.1), so such a message can never be
    delivered: it is refused at ``publish()``, before it reaches the outbox.

    Attributes:
        topic: The topic it was for.
        size: Its size in bytes: the payload plus the topic as UTF-8.
        limit: The most bytes a message may have.
    """

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"message for {topic!r} is {size} bytes (payload and topic); "
            f"the broker accepts at most {limit}"
        )
        self.topic = topic
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[MessageTooLargeError], tuple[str, int, int]]:
        return (type(self), (self.topic, self.size, self.limit))


DiscoveryErrorKind = Literal[
    "nxdomain",
    "servfail",
    "timeout",
    "no_cname",
    "cname_loop",
    "txt_missing",
    "txt_not_json",
    "txt_invalid",
    "unknown_region",
    "no_address",
    "name_not_allowed",  # the CNAME target is under no allowed domain suffix
]


class DiscoveryError(DeviceAgentError):
    """DNS discovery got no usable answer; what to do about it is the caller's choice.

    The message is one line: what went wrong and where,
    ``name @ nameserver:port``.

    Attributes:
        kind: what went wrong, one of :data:`DiscoveryErrorKind`.
        name: the DNS name asked when it went wrong (the CNAME's, the TXT's,
            or a host whose address was wanted).
        nameserver: the nameservers asked, ``host:port`` (comma-separated
            when several), or None for the system's resolver configuration.
        detail: the "what", in words.
    """

    def __init__(
        self, kind: DiscoveryErrorKind, name: str, detail: str, nameserver: str | None = None
    ) -> None:
        self.kind: DiscoveryErrorKind = kind
        self.name = name
        self.detail = " ".join(detail.split())  # one line, whatever the record held
        self.nameserver = nameserver
        where = f"{name} @ {nameserver or 'system nameservers'}"
        super().__init__(f"DNS discovery: {self.detail} ({kind}; {where})")

    def __reduce__(self) -> tuple[type[DiscoveryError], tuple[str, str, str, str | None]]:
        return (type(self), (self.kind, self.name, self.detail, self.nameserver))
