"""The ``iotdr tools`` commands: options, output and exit codes; the work is in the modules.

Every command takes the same region options (:func:`region_options`), prints
its result on stdout (``--json`` for one JSON object) and exits 0 when all is
well, 1 when a check found a problem, 2 on usage, configuration or
environment errors (one line on stderr, from the error's ``exit_code``).
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

__all__ = ["COMMANDS", "region_options"]


def region_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every tool shares: regions, endpoints, profile, local regions, --json."""
    options = [
        click.option("--region", envvar="IOTDR_REGION", help="The one region to work on."),
        click.option("--primary-region", envvar="IOTDR_PRIMARY_REGION"),
        click.option("--secondary-region", envvar="IOTDR_SECONDARY_REGION"),
        click.option("--endpoint-url", help="An AWS-compatible iot endpoint for every region."),
        click.option("--primary-endpoint-url", envvar="IOTDR_PRIMARY_ENDPOINT_URL"),
        click.option("--secondary-endpoint-url", envvar="IOTDR_SECONDARY_ENDPOINT_URL"),
        click.option("--primary-data-endpoint-url", envvar="IOTDR_PRIMARY_DATA_ENDPOINT_URL"),
        click.option("--secondary-data-endpoint-url", envvar="IOTDR_SECONDARY_DATA_ENDPOINT_URL"),
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


def emit(options: dict[str, Any], data: dict[str, Any], text: str) -> None:
    """The result: JSON with --json, else the text."""
    if options.get("as_json"):
        click.echo(json.dumps(data, sort_keys=True, default=str))
    else:
        click.echo(text)


def fail_if(condition: bool) -> None:
    """Exit 1 (a check found a problem) when ``condition``."""
    if condition:
        raise click.exceptions.Exit(1)


_workers = click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 128))
_query = click.option(
    "--query-string",
    "query",
    help="A fleet-indexing query (thingName:dev*, attributes.K:V, thingTypeName:, "
    "thingGroupNames:, AND/OR/NOT).",
)
_page_size = click.option(
    "--page-size", default=100, show_default=True, type=click.IntRange(1, 500),
    help="Things per SearchIndex page (nextToken is followed to the end).",
)  # fmt: skip


@click.command("search")
@region_options
@_query
@_page_size
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
    emit(options, {"thing": options["thing"], "regions": found}, "\n".join(lines))
    fail_if(problem)


@click.command("compare-devices")
@region_options
@_query
@_page_size
@_workers
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
    emit(options, data, report.text())
    fail_if(not report.ok)


def _attributes(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    del ctx, param
    found = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        found[key.strip()] = text
    return found


@click.command("create-device")
@region_options
@click.argument("name")
@click.option(
    "--attributes", "attributes", multiple=True, callback=_attributes, help="KEY=VALUE, repeatable."
)
@click.option("--thing-type", help="An existing thing type.")
@click.option(
    "--thing-group", "groups", multiple=True, help="An existing thing group (repeatable)."
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A policy document (JSON); the region of its IoT ARNs is set to the target's.",
)
@click.option("--policy-name", help="[default: NAME-policy with --policy, else iotdr-tools-device]")
@click.option(
    "--ca",
    "ca_cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Sign with this CA certificate (and --ca-key) instead of AWS's CA.",
)
@click.option("--ca-key", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key-algorithm", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(),
    show_default=True,
    help="Where NAME.certificate.pem, .private.key, .public.key go.",
)
def create_device(**options: Any) -> None:
    """Create a device: key, certificate, policy, thing; in the primary (or --region) only.

    Writes NAME.certificate.pem, NAME.private.key (0600) and NAME.public.key.
    """
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.tools._devices import create_device as create  # noqa: PLC0415

    if bool(options["ca_cert"]) != bool(options["ca_key"]):
        raise ConfigError("--ca and --ca-key go together")
    regions = connect(options)
    created = create(
        regions.client(regions.primary.region),
        options["name"],
        out_dir=options["out_dir"],
        attributes=options["attributes"],
        thing_type=options["thing_type"],
        groups=options["groups"],
        policy_file=options["policy_file"],
        policy_name=options["policy_name"],
        ca=(options["ca_cert"], options["ca_key"]) if options["ca_cert"] else None,
        algorithm=options["key_algorithm"],
    )
    emit(options, created.as_dict(),
         f"created {created.name} in {created.region}: certificate {created.certificate_id}, "
         f"policy {created.policy}; files {', '.join(created.files)}")  # fmt: skip


@click.command("delete-devices")
@region_options
@click.option(
    "--query-string", "query", required=True, help="The things to delete (fleet indexing)."
)
@click.option("--force", is_flag=True, help="Do not ask.")
@_page_size
def delete_devices(**options: Any) -> None:
    """Delete the things a query matches, with what nothing else uses.

    A certificate is deleted only when no other thing uses it, a policy only when no
    other principal does. Asks first unless --force. Exit 1 when a thing could not be deleted.
    """
    import sys  # noqa: PLC0415

    from replicator._errors import ConfigError, RegionError  # noqa: PLC0415
    from replicator.tools._devices import DeleteReport, delete_thing  # noqa: PLC0415
    from replicator.tools._progress import Progress  # noqa: PLC0415
    from replicator.tools._registry import search_things  # noqa: PLC0415

    regions = connect(options)
    client = regions.client(regions.primary.region)
    found = search_things(client, options["query"], page_size=options["page_size"])
    names = sorted(t["thingName"] for t in found)
    report = DeleteReport(client.region, matched=len(names))
    if names and not options["force"]:
        if not sys.stdin.isatty():
            raise ConfigError(
                "delete-devices asks before deleting: pass --force when not at a terminal"
            )
        click.echo("\n".join(names), err=True)
        if not click.confirm(f"delete these {len(names)} things in {client.region}?", err=True):
            raise click.exceptions.Exit(1)
    try:
        with Progress("deleting", total=len(names)) as progress:
            for name in names:
                report.interrupted = name
                try:
                    delete_thing(client, name, report)
                except RegionError as exc:
                    report.failures.append({"thing": name, "error": str(exc)})
                report.interrupted = None
                progress.advance()
    except KeyboardInterrupt:
        emit(options, report.as_dict(), report.text())
        raise click.exceptions.Exit(130) from None
    emit(options, {**report.as_dict(), "throttled": regions.throttles()}, report.text())
    fail_if(bool(report.failures))


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
    emit(options, {"regions": results}, "\n".join(lines))


@click.command("bulk-provision")
@region_options
@click.argument("base")
@click.argument("count", type=click.IntRange(1, 1_000_000))
@click.option("--key-algorithm", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True,
              help="EC P-256, or RSA 2048 (as the reference tools made).")  # fmt: skip
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path(),
              show_default=True, help="Where BASE-%Y-%m-%d_%H-%M-%S/ is made.")  # fmt: skip
@click.option(
    "--new", "fresh", is_flag=True, help="Start a new run even if one of BASE is unfinished."
)
@click.option(
    "--processes", type=click.IntRange(1, 256), help="Key generators [default: one per core]."
)
@click.option("--workers", default=16, show_default=True, type=click.IntRange(1, 256),
              help="Parallel API calls (paced by AWS's default quotas).")  # fmt: skip
def bulk_provision(**options: Any) -> None:
    """Provision COUNT devices BASE0..BASE{COUNT-1} in the primary (or --region): keys, things.

    Keys and CSRs in parallel, then certificates (AWS's CA), the device policy and
    the things by quota-aware parallel calls. Writes BASE-%Y-%m-%d_%H-%M-%S/ with
    results.json and per-device key files (0600). Run it again to continue an
    interrupted run. Exit 1 when a device could not be provisioned.
    """
    from replicator.tools._bulk import BulkRun  # noqa: PLC0415
    from replicator.tools._progress import Progress  # noqa: PLC0415

    regions = connect(options)
    client = regions.client(regions.primary.region)
    run = BulkRun.open(options["out_dir"], options["base"], options["count"], client.region,
                       algorithm=options["key_algorithm"], fresh=options["fresh"])  # fmt: skip
    status = "in_progress"
    try:
        with Progress("keys and CSRs", total=options["count"]) as progress:
            run.generate_keys(processes=options["processes"], progress=progress)
        todo = options["count"] - len(run.devices)
        with Progress("provisioning", total=todo) as progress:
            run.provision(client, workers=options["workers"], progress=progress)
        status = "complete" if not run.failures else "in_progress"
    except KeyboardInterrupt:
        run.save(force=True, status="in_progress")
        click.echo(
            f"interrupted: {len(run.devices)} of {run.count} devices provisioned in "
            f"{run.directory}; run the same command again to continue",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
    run.save(force=True, status=status)
    throttled = regions.throttles()
    failures = [{"thingName": n, "error": e} for n, e in sorted(run.failures.items())]
    summary: dict[str, Any] = {
        "directory": str(run.directory),
        "resumed": run.resumed,
        "count": run.count,
        "provisioned": len(run.devices),
        "failed": len(run.failures),
        "failures": failures,
        "keys_s": round(run.timings.get("keys_s", 0.0), 3),
        "provision_s": round(run.timings.get("provision_s", 0.0), 3),
        "throttled": throttled,
    }
    lines = [f"FAILED {f['thingName']}: {f['error']}" for f in failures]
    lines.append(
        f"{run.directory}: provisioned {len(run.devices)} of {run.count} in {client.region}"
        f"{' (resumed)' if run.resumed else ''}; keys and CSRs {summary['keys_s']} s, "
        f"provisioning {summary['provision_s']} s; throttled {sum(throttled.values())}"
    )
    emit(options, summary, "\n".join(lines))
    fail_if(bool(run.failures))


@click.command("extract-certs")
@click.argument("results", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False),
              help="[default: the results file's folder]")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def extract_certs(**options: Any) -> None:
    """Write each device's NAME.certificate.pem from a bulk-provision results.json."""
    from replicator.tools._bulk import extract_certs as extract  # noqa: PLC0415

    results: Path = options["results"]
    written = extract(results, options["out_dir"] or results.parent)
    where = options["out_dir"] or results.parent
    emit(options, {"written": written, "count": len(written)},
         f"wrote {len(written)} certificates to {where}")  # fmt: skip


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
    emit(options, {**report.as_dict(), "throttled": regions.throttles()}, report.text())
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
    emit(options, report.as_dict(), report.text())
    if report.interrupted:
        raise click.exceptions.Exit(130)
    fail_if(not report.ok)


COMMANDS: list[click.Command] = [
    shadow_test,
    e2e,
    bulk_provision,
    extract_certs,
    search,
    lookup,
    compare_devices,
    create_device,
    delete_devices,
    enable_events,
]
"""Registered in ``replicator/cli.py``'s ``tools`` group."""
