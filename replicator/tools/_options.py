"""What every ``iotdr tools`` command shares: region options, connecting, output, exit codes.

Every command takes the same region options (:func:`region_options`), prints
its result on stdout (``--json`` for one JSON object) and exits 0 when all is
well, 1 when a check found a problem, 2 on usage, configuration or
environment errors (one line on stderr, from the error's ``exit_code``).
Throttling is waited out and said on stderr (:func:`emit`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.tools._context import ToolRegions

__all__ = ["PAGE_SIZE", "QUERY", "WORKERS", "connect", "emit", "fail_if", "region_options"]


def region_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every tool shares: regions, endpoints, profile, local regions, --json."""
    options = [
        click.option(
            "--region", envvar="IOTDR_REGION", help="The one region to work on (else the primary)."
        ),
        click.option(
            "--primary-region",
            envvar="IOTDR_PRIMARY_REGION",
            help="Where devices are made, and compared from [default with --local: its primary].",
        ),
        click.option(
            "--secondary-region",
            envvar="IOTDR_SECONDARY_REGION",
            help="The replica [default with --local: its secondary].",
        ),
        click.option("--endpoint-url", help="An AWS-compatible iot endpoint for every region."),
        click.option(
            "--primary-endpoint-url",
            envvar="IOTDR_PRIMARY_ENDPOINT_URL",
            help="The primary's iot (and iot-data) endpoint.",
        ),
        click.option(
            "--secondary-endpoint-url",
            envvar="IOTDR_SECONDARY_ENDPOINT_URL",
            help="The secondary's iot (and iot-data) endpoint.",
        ),
        click.option(
            "--primary-data-endpoint-url",
            envvar="IOTDR_PRIMARY_DATA_ENDPOINT_URL",
            help="The primary's iot-data endpoint [default: DescribeEndpoint iot:Data-ATS].",
        ),
        click.option(
            "--secondary-data-endpoint-url",
            envvar="IOTDR_SECONDARY_DATA_ENDPOINT_URL",
            help="The secondary's iot-data endpoint.",
        ),
        click.option("--profile", envvar="AWS_PROFILE", help="A profile of boto3's configuration."),
        click.option(
            "--local",
            type=click.Path(path_type=Path, file_okay=False),
            envvar="IOTDR_LOCAL",
            help="The state directory of a running `iotdr sim regions up`: every endpoint from it.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def connect(options: dict[str, Any], *, two: str | None = None) -> ToolRegions:
    """The command's regions, connected; ``two``: the command needs a secondary."""
    from replicator.tools._context import resolve_regions  # noqa: PLC0415

    regions = resolve_regions(options)
    if two is not None:
        regions.need_secondary(two)
    if options.get("local") is not None and not (
        os.environ.get("AWS_ACCESS_KEY_ID")
        or os.environ.get("AWS_PROFILE")
        or options.get("profile")
    ):
        # The local regions accept any signature: the entry point supplies one.
        os.environ["AWS_ACCESS_KEY_ID"] = "local"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "local"  # noqa: S105 - not a secret
    return regions.connect()


def emit(
    options: dict[str, Any], data: dict[str, Any], text: str, *, regions: ToolRegions | None = None
) -> None:
    """The result: JSON with --json, else the text; throttling said on stderr."""
    if options.get("as_json"):
        click.echo(json.dumps(data, sort_keys=True, default=str))
    else:
        click.echo(text)
    throttled = regions.throttles() if regions is not None else {}
    if throttled:
        which = ", ".join(f"{k} {v}" for k, v in sorted(throttled.items()))
        click.echo(f"iotdr: throttled ({which}): slowed down and carried on", err=True)


def fail_if(condition: bool) -> None:
    """Exit 1 (a check found a problem) when ``condition``."""
    if condition:
        raise click.exceptions.Exit(1)


WORKERS = click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 128))
QUERY = click.option(
    "--query-string",
    "query",
    help="A fleet-indexing query (thingName:dev*, attributes.K:V, thingTypeName:, "
    "thingGroupNames:, AND/OR/NOT).",
)
PAGE_SIZE = click.option(
    "--page-size", default=100, show_default=True, type=click.IntRange(1, 500),
    help="Things per SearchIndex page (nextToken is followed to the end).",
)  # fmt: skip
