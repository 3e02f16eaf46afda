"""``compare-devices``: both regions completely, every difference named, counters that count.

:func:`differences` is pure: two :class:`~replicator.tools._registry.DeviceView`
of one thing (either may be None: missing there) in, the list of
:class:`Difference` out: existence, thing type, each attribute, groups, the
set of certificates, each certificate's status and policies, and each
policy's default document compared region-neutrally (the primary's ARNs
rewritten for the secondary by parsing, as the replicator writes them).
:func:`compare_devices` reads both regions in parallel within their quotas
and counts: ``compared`` (things looked at), ``not_synced`` (things with at
least one difference), ``errors`` (things that could not be read, each with
its reason): a report of "0 errors" means none happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replicator._errors import PolicyDocumentError, RegionError
from replicator.core._arns import ArnScope, normalize_document, rewrite_policy_document
from replicator.tools._pool import parallel

if TYPE_CHECKING:
    from replicator.tools._progress import Progress
    from replicator.tools._registry import DeviceView, RegionReader

__all__ = ["CompareReport", "Difference", "compare_devices", "differences"]


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of one thing that differs between the regions."""

    thing: str
    field: str
    primary: Any
    secondary: Any

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"thing": self.thing, "field": self.field,
                "primary": self.primary, "secondary": self.secondary}  # fmt: skip

    def text(self) -> str:
        """One line."""
        return (
            f"{self.thing}: {self.field}: primary={json.dumps(self.primary)} "
            f"secondary={json.dumps(self.secondary)}"
        )


def _policy_differences(
    thing: str, primary: DeviceView, secondary: DeviceView, scopes: tuple[ArnScope, ArnScope]
) -> list[Difference]:
    found = []
    for name in sorted(set(primary.policies) | set(secondary.policies)):
        ours, theirs = primary.policies.get(name), secondary.policies.get(name)
        if name not in primary.policies or name not in secondary.policies:
            continue  # already named by the certificates' policies
        if ours is None or theirs is None:
            found.append(Difference(thing, f"policy {name}", ours is not None, theirs is not None))
            continue
        try:
            expected = rewrite_policy_document(name, ours, scopes[0], scopes[1])
            actual = normalize_document(name, theirs)
        except PolicyDocumentError as exc:
            found.append(Difference(thing, f"policy {name}.document", str(exc), None))
            continue
        if expected != actual:
            found.append(
                Difference(
                    thing, f"policy {name}.document", json.loads(expected), json.loads(actual)
                )
            )
    return found


def differences(
    thing: str,
    primary: DeviceView | None,
    secondary: DeviceView | None,
    *,
    scopes: tuple[ArnScope, ArnScope],
) -> list[Difference]:
    """What differs for ``thing`` between the primary and the secondary (empty: in sync).

    Args:
        thing: the thing's name.
        primary: the thing in the primary (None: not there).
        secondary: the thing in the secondary (None: not there).
        scopes: the primary's and the secondary's region and account, for policy ARNs.
    """
    if primary is None or secondary is None:
        if primary is None and secondary is None:
            return []
        return [Difference(thing, "exists", primary is not None, secondary is not None)]
    found = []
    if primary.type_name != secondary.type_name:
        found.append(Difference(thing, "thingTypeName", primary.type_name, secondary.type_name))
    for key in sorted(set(primary.attributes) | set(secondary.attributes)):
        ours, theirs = primary.attributes.get(key), secondary.attributes.get(key)
        if ours != theirs:
            found.append(Difference(thing, f"attributes.{key}", ours, theirs))
    if primary.groups != secondary.groups:
        found.append(Difference(thing, "thingGroups", list(primary.groups), list(secondary.groups)))
    ours_c, theirs_c = set(primary.certificates), set(secondary.certificates)
    if ours_c != theirs_c:
        found.append(Difference(thing, "certificates", sorted(ours_c), sorted(theirs_c)))
    for certificate_id in sorted(ours_c & theirs_c):
        mine, other = primary.certificates[certificate_id], secondary.certificates[certificate_id]
        if mine.status != other.status:
            found.append(
                Difference(thing, f"certificate {certificate_id}.status", mine.status, other.status)
            )
        if mine.policies != other.policies:
            found.append(Difference(thing, f"certificate {certificate_id}.policies",
                                    list(mine.policies), list(other.policies)))  # fmt: skip
    found.extend(_policy_differences(thing, primary, secondary, scopes))
    return found


@dataclass(slots=True)
class CompareReport:
    """What ``compare-devices`` found."""

    primary: str
    secondary: str
    query: str | None
    compared: int = 0
    not_synced: int = 0
    errors: int = 0
    differences: list[Difference] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every thing compared and found the same."""
        return self.not_synced == 0 and self.errors == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "primary": self.primary,
            "secondary": self.secondary,
            "query": self.query,
            "compared": self.compared,
            "not_synced": self.not_synced,
            "errors": self.errors,
            "differences": [d.as_dict() for d in self.differences],
            "failures": self.failures,
        }

    def text(self) -> str:
        """Human lines: each difference and error, then the counters."""
        lines = [f"DIFF {d.text()}" for d in self.differences]
        lines += [f"ERROR {f['thing']}: {f['error']}" for f in self.failures]
        lines.append(
            f"compared {self.compared} things ({self.primary} -> {self.secondary}): "
            f"not_synced {self.not_synced}, errors {self.errors}"
        )
        return "\n".join(lines)


def compare_devices(
    primary: RegionReader,
    secondary: RegionReader,
    *,
    query: str | None,
    workers: int,
    progress: Progress | None = None,
    page_size: int = 100,
) -> CompareReport:
    """Compare every thing of ``query`` (all things when None) found in either region."""
    report = CompareReport(primary.region, secondary.region, query)
    names = sorted(set(primary.names(query, page_size=page_size))
                   | set(secondary.names(query, page_size=page_size)))  # fmt: skip
    if progress is not None:
        progress.set_total(len(names))

    def one(name: str) -> tuple[str, list[Difference] | str]:
        try:
            ours, theirs = primary.device(name), secondary.device(name)
        except RegionError as exc:
            return name, str(exc)
        scopes = (
            ArnScope(primary.region, primary.client.account_id or ""),
            ArnScope(
                secondary.region, secondary.client.account_id or primary.client.account_id or ""
            ),
        )
        return name, differences(name, ours, theirs, scopes=scopes)

    for name, result in parallel(one, names, workers=workers, name="compare"):
        report.compared += 1
        if isinstance(result, str):
            report.errors += 1
            report.failures.append({"thing": name, "error": result})
        elif result:
            report.not_synced += 1
            report.differences.extend(result)
        if progress is not None:
            progress.advance()
    return report
