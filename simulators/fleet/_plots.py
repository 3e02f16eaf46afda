"""The run's plots as PNG files: matplotlib's Agg canvas, no pyplot and no global state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simulators.fleet._report import (
    PLOT_FILES,
    connected_over_time,
    delivered_over_time,
    device_times,
    fault_windows,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from matplotlib.axes import Axes

    from simulators.fleet._records import RunRecord

__all__ = ["write_plots"]

_STEP = 0.5  # seconds between the points of the time series


def write_plots(record: RunRecord, report: dict[str, Any], directory: Path) -> list[Path]:
    """Write ``connected.png``, ``cdf.png`` and ``messages.png`` into ``directory``.

    Args:
        record: the run.
        report: its report (:func:`simulators.fleet._report.build_report`).
        directory: where to write them (created if missing).

    Returns:
        The files written, in the order of :data:`PLOT_FILES`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    end = max(record.duration_s, 1.0)
    times = [i * _STEP for i in range(int(end / _STEP) + 1)]
    paths = [directory / name for name in PLOT_FILES]
    _save(_connected(record, report, times), paths[0])
    _save(_cdf(record, report), paths[1])
    _save(_messages(record, report, times), paths[2])
    return paths


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)


def _mark_steps(axes: Axes, record: RunRecord) -> None:
    for start, end, region, mode in fault_windows(record):
        axes.axvspan(start, end, alpha=0.15, color="tab:red", label=f"{region} {mode}")
    for step in record.steps:
        if step.action != "fault":
            axes.axvline(step.t, color="grey", linestyle=":", linewidth=1)
            label = " ".join(x for x in (step.action, step.region or "", step.detail) if x)
            axes.annotate(
                label,
                (step.t, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                va="top",
                ha="right",
            )


def _connected(record: RunRecord, report: dict[str, Any], times: Sequence[float]) -> Figure:
    figure = Figure(figsize=(10, 4.5))
    axes = figure.add_subplot()
    for region, counts in connected_over_time(record, times).items():
        axes.plot(times, counts, label=region, drawstyle="steps-post")
    _mark_steps(axes, record)
    axes.set_xlabel("seconds since the start")
    axes.set_ylabel("devices connected")
    axes.set_title(f"{report['scenario']}: devices connected per region ({report['devices']})")
    axes.set_xlim(0, max(times[-1], 1.0))
    axes.legend(loc="center right", fontsize=8)
    figure.tight_layout()
    return figure


def _cdf(record: RunRecord, report: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    times = device_times(record)
    present = max(len(times.present), 1)
    for name, per_device in (("failover", times.failover), ("failback", times.failback)):
        values = sorted(per_device.values())
        if values:
            shares = [(i + 1) / present for i in range(len(values))]
            axes.step(values, shares, where="post", label=f"{name} ({len(values)} devices)")
    axes.set_xlabel("seconds (failover: since the disruption; failback: since it ended)")
    axes.set_ylabel("share of devices")
    axes.set_ylim(0, 1.05)
    axes.set_title(f"{report['scenario']}: failover and failback times")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "no failover", transform=axes.transAxes, ha="center")
    figure.tight_layout()
    return figure


def _messages(record: RunRecord, report: dict[str, Any], times: Sequence[float]) -> Figure:
    figure = Figure(figsize=(10, 4.5))
    axes = figure.add_subplot()
    sent, delivered = delivered_over_time(record, times)
    axes.plot(times, sent, label="sent", drawstyle="steps-post")
    axes.plot(times, delivered, label="delivered (distinct)", drawstyle="steps-post")
    _mark_steps(axes, record)
    messages = report["messages"]
    axes.set_title(
        f"{report['scenario']}: messages ({messages['lost']} lost, "
        f"{messages['duplicated']} duplicated)"
    )
    axes.set_xlabel("seconds since the start")
    axes.set_ylabel("messages (cumulative)")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure
