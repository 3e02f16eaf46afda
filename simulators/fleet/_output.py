"""Writing a run's report: report.json, report.md, timeline.csv, the plots and the raw record."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from simulators._errors import SimulatorError
from simulators.fleet._record_file import RECORD_FILE, write_record
from simulators.fleet._report import build_report, render_markdown, timeline_csv

if TYPE_CHECKING:
    from pathlib import Path

    from simulators.fleet._records import RunRecord

__all__ = ["write_report"]

logger = logging.getLogger(__name__)


def write_report(record: RunRecord, directory: Path) -> dict[str, Any]:
    """Compute the report of ``record`` and write every file of it into ``directory``.

    The raw record goes there too (``record.json.gz``,
    :mod:`simulators.fleet._record_file`), so that shards' reports can be merged
    exactly and a report rebuilt. Returns report.json's content, with ``files``
    listing what was written.

    Raises:
        SimulatorError: the directory cannot be written.
    """
    from simulators.fleet._plots import write_plots  # noqa: PLC0415 - matplotlib is slow to load

    report = build_report(record)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        plots = write_plots(record, report, directory)
        write_record(record, directory / RECORD_FILE)
        report["files"] = sorted(
            ["report.json", "report.md", "timeline.csv", RECORD_FILE, *(p.name for p in plots)]
        )
        (directory / "timeline.csv").write_text(timeline_csv(record))
        (directory / "report.md").write_text(render_markdown(report))
        (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        reason = exc.strerror or exc
        msg = f"cannot write the report into {directory}: {reason}; choose another --report-dir"
        raise SimulatorError(msg) from exc
    return report
