"""Zone files for the Route 53 stand-in: YAML (or JSON, which YAML reads too).

Example::

    origin: iotdr.test.          # the zone apex
    default_ttl: 0               # optional; per record ``ttl`` overrides it
    negative_ttl: 0              # optional; SOA minimum
    records:
      - name: iot                # relative to the origin, or absolute with a final dot
        type: CNAME
        value: local-ats.iot.us-east-1.iotdr.test.
      - name: _iot
        type: TXT
        json: {primary: us-east-1, secondary: us-west-2}
      - name: local-ats.iot.us-east-1
        type: A
        values: [127.0.0.2]
        ttl: 60

A record gives exactly one of ``value`` (one string), ``values`` (a list) or,
for TXT, ``json`` (a mapping or list, stored as compact JSON, or a string that
must parse as JSON). Unknown keys are errors, so a typo never goes unnoticed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from simulators._errors import ZoneError
from simulators.dns._zone import SUPPORTED_TYPES, Zone, json_text

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["load_zone_file", "zone_from_mapping"]

_TOP_KEYS = frozenset({"origin", "default_ttl", "negative_ttl", "records"})
_RECORD_KEYS = frozenset({"name", "type", "value", "values", "json", "ttl"})


def load_zone_file(path: Path) -> Zone:
    """Read and validate a zone file.

    Raises:
        ZoneError: the file is missing, unreadable or invalid; the message names
            the file and the record at fault.
    """
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"cannot read zone file: {exc.strerror}"
        raise ZoneError(msg, source=source) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        msg = f"not valid YAML or JSON{where}"
        raise ZoneError(msg, source=source) from exc
    return zone_from_mapping(data, source=source)


def zone_from_mapping(data: object, *, source: str = "zone") -> Zone:
    """Build a :class:`Zone` from the parsed contents of a zone file."""
    if not isinstance(data, dict):
        msg = "a zone file is a mapping with 'origin' and 'records'"
        raise ZoneError(msg, source=source)
    _no_unknown_keys(data, _TOP_KEYS, "zone file", source)
    origin = data.get("origin")
    if not isinstance(origin, str) or not origin:
        msg = "'origin' (the zone apex, e.g. iotdr.test.) is required"
        raise ZoneError(msg, source=source)
    default_ttl: int = data.get("default_ttl", 0)  # checked by Zone.set
    try:
        zone = Zone(origin, negative_ttl=data.get("negative_ttl", 0))
    except ZoneError as exc:
        raise ZoneError(str(exc), source=source) from exc
    records = data.get("records", [])
    if not isinstance(records, list):
        msg = "'records' must be a list"
        raise ZoneError(msg, source=source)
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(record, dict):
            msg = f"{where} must be a mapping with name, type and value"
            raise ZoneError(msg, source=source)
        _no_unknown_keys(record, _RECORD_KEYS, where, source)
        name, kind = record.get("name"), record.get("type")
        if not isinstance(name, str) or not isinstance(kind, str):
            msg = f"{where} needs 'name' and 'type' strings"
            raise ZoneError(msg, source=source)
        where = f"{where} ({name} {kind})"
        if kind.upper() not in SUPPORTED_TYPES:
            msg = f"{where}: type must be one of {', '.join(SUPPORTED_TYPES)}"
            raise ZoneError(msg, source=source)
        values = _record_values(record, kind.upper(), where, source)
        try:
            ttl: int = record.get("ttl", default_ttl)  # checked by Zone.set
            zone.set(name, kind, values, ttl=ttl)
        except ZoneError as exc:
            raise ZoneError(f"{where}: {exc}", source=source) from exc
    return zone


def _record_values(record: dict[str, Any], kind: str, where: str, source: str) -> list[str]:
    given = [k for k in ("value", "values", "json") if k in record]
    if len(given) != 1:
        msg = f"{where}: give exactly one of 'value', 'values' or 'json'"
        raise ZoneError(msg, source=source)
    key = given[0]
    raw = record[key]
    if key == "json":
        if kind != "TXT":
            msg = f"{where}: 'json' is for TXT records only"
            raise ZoneError(msg, source=source)
        return [json_text(raw, where=where, source=source)]
    items = raw if key == "values" else [raw]
    if not isinstance(items, list) or not items:
        msg = f"{where}: '{key}' must be a non-empty list of strings"
        raise ZoneError(msg, source=source)
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in items):
        msg = f"{where}: values must be strings"
        raise ZoneError(msg, source=source)
    return [str(v) for v in items]


def _no_unknown_keys(
    mapping: dict[str, Any], allowed: frozenset[str], where: str, source: str
) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        msg = (
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
        raise ZoneError(msg, source=source)
