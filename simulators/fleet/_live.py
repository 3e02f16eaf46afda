"""The live progress display of ``iotdr sim run`` (rich), shown only on a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from types import TracebackType

    from simulators.fleet._driver import Progress

__all__ = ["LiveDisplay"]


class LiveDisplay:
    """A small table refreshed with every :class:`Progress` (on stderr, so stdout stays clean)."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self._console = Console(stderr=True)
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)

    def __repr__(self) -> str:
        return f"LiveDisplay({self.scenario!r})"

    @property
    def enabled(self) -> bool:
        """Whether stderr is a terminal (else the display stays quiet)."""
        return self._console.is_terminal

    def __enter__(self) -> Self:
        if self.enabled:
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self._live.__exit__(exc_type, exc, tb)

    def update(self, progress: Progress) -> None:
        """Show ``progress``."""
        if not self.enabled:
            return
        table = Table(title=f"iotdr sim run: {self.scenario}", title_justify="left")
        table.add_column("phase")
        table.add_column("t", justify="right")
        for region in progress.connected:
            table.add_column(region, justify="right")
        table.add_column("sent", justify="right")
        table.add_column("delivered", justify="right")
        table.add_column("faults")
        table.add_row(
            progress.phase,
            f"{progress.t:.0f}/{progress.duration_s:.0f} s",
            *(f"{n}" for n in progress.connected.values()),
            f"{progress.sent:,}",
            f"{progress.delivered:,}",
            ", ".join(progress.faults) or "-",
        )
        if progress.last_step:
            table.caption = f"last step: {progress.last_step}  ({progress.devices} devices)"
        self._live.update(table)
