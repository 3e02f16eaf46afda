"""For fakes of the control plane's registry reader: no things, thing groups or policies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable


class NoDoorRecords:
    """The reader's things, thing groups and policies, for a fake that has none."""

    def things(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], list(names or ())

    def thing_groups(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], list(names or ())

    def policies(
        self, region: str, names: Iterable[str] | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        return [], list(names or ())
