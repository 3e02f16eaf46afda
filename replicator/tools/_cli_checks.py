"""``shadow-test`` and ``e2e``: what a deployment does, tested."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from replicator.tools._options import (
    connect,
    emit,
    fail_if,
    region_options,
)

__all__ = ["e2e", "shadow_test"]


@click.command("shadow-test")
@region_options
@click.option("--num-tests", default=10, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--max-workers", default=10, show_default=True, type=click.IntRange(1, 256))
@click.option("--named-shadows", default=0, show_default=True, type=click.IntRange(0, 100),
              help="Named shadows per test, besides the classic one.")  # fmt: skip
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a shadow may take to reach the secondary.")  # fmt: skip
def shadow_test(**options: Any) -> None:
    """Create shadows in the primary, wait for each in the secondary, compare, delete in both.

    Counts compared, not_synced and errors, and the replication latency's
    percentiles. Exit 1 when a shadow did not arrive the same, or a call failed.
    """
    from replicator.tools._progress import Progress  # noqa: PLC0415
    from replicator.tools._shadows import shadow_test as run_tests  # noqa: PLC0415

    regions = connect(options, two="shadow-test")
    secondary = regions.need_secondary("shadow-test")
    with Progress("shadow tests", total=options["num_tests"]) as progress:
        report = run_tests(
            regions.client(regions.primary.region),
            regions.client(secondary.region),
            tests=options["num_tests"],
            workers=options["max_workers"],
            named=options["named_shadows"],
            timeout_s=options["timeout_s"],
            progress=progress,
        )
    emit(options, {**report.as_dict(), "throttled": regions.throttles()}, report.text(),
         regions=regions)  # fmt: skip
    if report.interrupted:
        raise click.exceptions.Exit(130)
    fail_if(not report.ok)


@click.command("e2e")
@region_options
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds each waiting step may take.")  # fmt: skip
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The CA of the regions' MQTT endpoints [default: the local regions' CA, "
              "else the system's trust store].")  # fmt: skip
def e2e(**options: Any) -> None:
    """Test the deployment end to end; every step PASS/FAIL with its time; clean up.

    Creates a device in the primary, waits for it in the secondary, publishes and
    subscribes with its identity in both regions, checks shadow replication, and
    deletes everything it created (also on failure or Ctrl-C). Exit 1 when a step failed.
    """
    from replicator.tools._e2e import run_e2e  # noqa: PLC0415

    regions = connect(options, two="e2e")
    report = run_e2e(regions, timeout_s=options["timeout_s"], ca_file=options["ca_file"])
    emit(options, report.as_dict(), report.text(), regions=regions)
    if report.interrupted:
        raise click.exceptions.Exit(130)
    fail_if(not report.ok)
