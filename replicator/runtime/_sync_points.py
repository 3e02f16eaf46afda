"""Sync points: what the two regions held when they were last in sync, kept in the journal.

A registry object's sync point is the region-neutral fingerprint both regions
held (``core/_sync.py``); a shadow's, the two versions that held the same
content. Failback reads them to copy back only what changed since. A mixin of
:class:`~replicator.runtime._journal.Journal`, whose file holds their tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from replicator.core._state import ObjectKey

__all__ = ["WATCHING_SINCE", "SyncPoints"]

WATCHING_SINCE: Final = "watching_since"
"""The ``meta`` entry: when the journal recorded its first sync point."""


class SyncPoints:
    """The journal's ``shadow_sync`` and ``object_sync`` tables."""

    def _write(self, sql: str, rows: Iterable[Mapping[str, object]] | Mapping[str, object]) -> int:
        raise NotImplementedError  # the journal's

    def _read(self, sql: str, params: dict[str, object] | tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError  # the journal's

    def shadow_sync(self, key: ObjectKey) -> tuple[str, int, str, int] | None:
        """The last sync point of a shadow: (source region, version, target region, version)."""
        rows = self._read(
            "SELECT source_region, source_version, target_region, target_version"
            " FROM shadow_sync WHERE key = ?",
            (str(key),),
        )
        if not rows:
            return None
        a, av, b, bv = rows[0]
        return str(a), int(av), str(b), int(bv)

    def set_shadow_sync(
        self, key: ObjectKey, *, source: tuple[str, int], target: tuple[str, int], now: float
    ) -> None:
        """Record that the two regions held the same content at these versions."""
        self._write(
            "INSERT OR REPLACE INTO shadow_sync VALUES (:key, :sr, :sv, :tr, :tv, :now)",
            {"key": str(key), "sr": source[0], "sv": source[1], "tr": target[0], "tv": target[1]}
            | {"now": now},
        )

    def forget_shadow_sync(self, key: ObjectKey) -> None:
        """Drop a shadow's sync point (the shadow is gone from both regions)."""
        self._write("DELETE FROM shadow_sync WHERE key = :key", {"key": str(key)})

    def object_sync(self, key: ObjectKey, regions: tuple[str, str]) -> str | None:
        """The fingerprint both ``regions`` (either order) held when last in sync, or None."""
        rows = self._read(
            "SELECT fingerprint FROM object_sync WHERE key = ? AND regions = ?",
            (str(key), _pair(regions)),
        )
        return str(rows[0][0]) if rows else None

    def set_object_sync(
        self, key: ObjectKey, regions: tuple[str, str], fingerprint: str | None, *, now: float
    ) -> None:
        """Record the fingerprint both regions hold; None: the object is in neither."""
        if fingerprint is None:
            self._write("DELETE FROM object_sync WHERE key = :key", {"key": str(key)})
            return
        self._write(
            "INSERT OR REPLACE INTO object_sync VALUES (:key, :regions, :fingerprint, :now)",
            {"key": str(key), "regions": _pair(regions), "fingerprint": fingerprint, "now": now},
        )
        if not getattr(self, "_watching", False):
            self._write(  # the oldest sync point: a journal older than this entry keeps its age
                "INSERT OR IGNORE INTO meta"
                " SELECT :name, COALESCE(MIN(updated_at), :now), :now FROM object_sync",
                {"name": WATCHING_SINCE, "now": now},
            )
            self._watching = True

    def watching_since(self) -> float | None:
        """When this journal recorded its first sync point (epoch seconds), or None.

        A certificate registered in a region after that, and without a sync
        point, was never in the other region while the journal watched: a
        device registered there, not one deleted in the other region.
        """
        rows = self._read("SELECT value FROM meta WHERE name = ?", (WATCHING_SINCE,))
        return float(rows[0][0]) if rows else None


def _pair(regions: tuple[str, str]) -> str:
    return " ".join(sorted(regions))
