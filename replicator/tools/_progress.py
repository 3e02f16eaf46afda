"""A progress bar on long work when stdout is a terminal (rich, when installed); else nothing."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Progress"]


class Progress:
    """``with Progress("compare", total=n) as bar: bar.advance()``; thread-safe, silent off a TTY.

    Args:
        description: what is being done.
        total: how many steps (None: unknown).
        enabled: draw at all (default: stdout is a terminal).
    """

    def __init__(self, description: str, *, total: int | None, enabled: bool | None = None) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        if enabled is None:
            enabled = sys.stdout.isatty()
        if enabled:
            try:
                from rich.progress import Progress as RichProgress  # noqa: PLC0415
            except ImportError:
                return
            self._bar = RichProgress(transient=True)
            self._task = self._bar.add_task(description, total=total)

    def __repr__(self) -> str:
        return f"Progress({self.description!r}, {self.done}/{self.total})"

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def set_total(self, total: int) -> None:
        """The number of steps, once known."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more done."""
        with self._lock:
            self.done += steps
            if self._bar is not None:
                self._bar.update(self._task, advance=steps)

    def note(self, text: str) -> None:
        """Say something about the work (e.g. ``throttled: slowing down``) next to the bar."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.description} ({text})")
