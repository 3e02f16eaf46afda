"""``search``, ``lookup``, ``compare-devices`` and ``enable-events``: reading both regions."""

from __future__ import annotations

from typing import Any

import click

from replicator.tools._options import (
    PAGE_SIZE,
    QUERY,
    WORKERS,
    connect,
    emit,
    fail_if,
    region_options,
)

__all__ = ["compare_devices", "enable_events", "lookup", "search"]


@click.command("search")
@region_options
@QUERY
@PAGE_SIZE
def search(**options: Any) -> None:
    """Every thing a fleet-indexing query matches (the whole result, page after page).

    Exit 1 when nothing matches.
    """
    from replicator.tools._registry import DEFAULT_QUERY, search_things  # noqa: PLC0415

    regions = connect(options)
    client = regions.client(regions.primary.region)
    query = options["query"] or DEFAULT_QUERY
    things = list(search_things(client, query, page_size=options["page_size"]))
    names = [t["thingName"] for t in things]
    emit(
        options,
        {"region": client.region, "query": query, "count": len(things), "things": things},
        "\n".join([*names, f"{len(names)} things match {query!r} in {client.region}"]),
        regions=regions,
    )
    fail_if(not things)


@click.command("lookup")
@region_options
@click.argument("thing")
def lookup(**options: Any) -> None:
    """The thing, its groups, certificates (status), policies, in each region; would it connect?

    Exit 1 when the thing is missing in a region or would not be admitted there.
    """
    from replicator.tools._lookup import admission  # noqa: PLC0415
    from replicator.tools._registry import RegionReader  # noqa: PLC0415

    regions = connect(options)
    found: dict[str, Any] = {}
    lines = []
    problem = False
    for config in regions.configs():
        client = regions.client(config.region)
        device = RegionReader(client).device(options["thing"], group_policies=True)
        verdict = admission(device, region=config.region, account=client.account_id)
        problem = problem or device is None or verdict.admitted is False
        found[config.region] = {
            "thing": device.as_dict() if device is not None else None,
            "admission": verdict.as_dict(),
        }
        lines.append(f"{config.region}:")
        if device is None:
            lines.append(f"  {options['thing']}: not found")
        else:
            lines.append(
                f"  thing {device.name} type={device.type_name} attributes={device.attributes}"
            )
            lines.append(f"  groups {', '.join(device.groups) or '-'}")
            lines.extend(
                f"  certificate {c.certificate_id} {c.status} "
                f"policies={', '.join(c.policies) or '-'}"
                for c in device.certificates.values()
            )
        admitted = {True: "yes", False: "no", None: "unknown"}[verdict.admitted]
        lines.append(f"  admitted: {admitted} ({verdict.reason})")
    emit(options, {"thing": options["thing"], "regions": found}, "\n".join(lines), regions=regions)
    fail_if(problem)


@click.command("compare-devices")
@region_options
@QUERY
@PAGE_SIZE
@WORKERS
def compare_devices(**options: Any) -> None:
    """Compare every device of both regions: existence, attributes, type, groups, certificates.

    Each certificate's status and policies and each policy's default document
    (region-neutral) too. Without --query-string every thing is listed
    (ListThings, no fleet indexing needed). Exit 1 on any difference or error.
    """
    from replicator.tools._compare import compare_devices as compare  # noqa: PLC0415
    from replicator.tools._progress import Progress  # noqa: PLC0415
    from replicator.tools._registry import RegionReader  # noqa: PLC0415

    regions = connect(options, two="compare-devices")
    secondary = regions.need_secondary("compare-devices")
    with Progress("comparing", total=None) as progress:
        report = compare(
            RegionReader(regions.client(regions.primary.region)),
            RegionReader(regions.client(secondary.region)),
            query=options["query"],
            workers=options["workers"],
            progress=progress,
            page_size=options["page_size"],
        )
    data = {**report.as_dict(), "throttled": regions.throttles()}
    emit(options, data, report.text(), regions=regions)
    fail_if(not report.ok)


@click.command("enable-events")
@region_options
def enable_events(**options: Any) -> None:
    """Turn registry events and fleet indexing on in every given region (idempotent).

    Shows what changed; nothing changes on a second run.
    """
    from replicator.tools._events import enable_events as enable  # noqa: PLC0415

    regions = connect(options)
    results = [enable(regions.client(c.region)) for c in regions.configs()]
    lines = []
    for result in results:
        if not result["changed"]:
            lines.append(f"{result['region']}: already on (nothing changed)")
            continue
        if result["events_enabled"]:
            lines.append(f"{result['region']}: events on: {', '.join(result['events_enabled'])}")
        if result["indexing_changed"]:
            lines.append(f"{result['region']}: thing indexing OFF -> REGISTRY")
    emit(options, {"regions": results}, "\n".join(lines), regions=regions)
