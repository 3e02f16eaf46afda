"""Change records as JSON, for the journal: :func:`record_to_json` and back. Pure."""

from __future__ import annotations

import json
from typing import Any

from replicator.core._records import RECORD_TYPES, ObjectNamed, Record
from replicator.core._state import ObjectKey

__all__ = ["record_from_json", "record_to_json"]


def record_to_json(record: Record) -> str:
    """The record as JSON, for the journal."""
    fields: dict[str, Any] = {"type": type(record).__name__}
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        fields[name] = str(value) if isinstance(value, ObjectKey) else value
    return json.dumps(fields, sort_keys=True)


def record_from_json(text: str) -> Record:
    """The record of :func:`record_to_json`.

    Raises:
        ValueError: not such a record.
    """
    fields = json.loads(text)
    cls = RECORD_TYPES.get(fields.pop("type", None))
    if cls is None:
        raise ValueError(f"not a change record: {text[:200]}")
    if cls is ObjectNamed:
        fields["key"] = ObjectKey.parse(fields["key"])
    record: Record = cls(**fields)
    return record
