"""``create-device``, ``delete-devices``, ``bulk-provision``, ``extract-certs``: making devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from replicator.tools._options import (
    PAGE_SIZE,
    connect,
    emit,
    fail_if,
    region_options,
)

__all__ = ["bulk_provision", "create_device", "delete_devices", "extract_certs"]

DEFAULT_OBSERVER_ID = "iotdr-fleet-observer"  # replicator.tools._observer's, not imported at start


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


def _observer_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    del ctx, param
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.tools._observer import check_observer_id  # noqa: PLC0415

    try:
        return check_observer_id(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


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
         f"policy {created.policy}; files {', '.join(created.files)}", regions=regions)  # fmt: skip


@click.command("delete-devices")
@region_options
@click.option(
    "--query-string", "query", required=True, help="The things to delete (fleet indexing)."
)
@click.option("--force", is_flag=True, help="Do not ask.")
@PAGE_SIZE
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
        emit(options, report.as_dict(), report.text(), regions=regions)
        raise click.exceptions.Exit(130) from None
    data = {**report.as_dict(), "throttled": regions.throttles()}
    emit(options, data, report.text(), regions=regions)
    fail_if(bool(report.failures))


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
@click.option("--bulk-registration", "bulk_mode", type=click.Choice(["auto", "on", "off"]),
              default="auto", show_default=True,
              help="AWS's bulk registration (StartThingRegistrationTask): auto uses it when "
              "the endpoint has it and --bucket (and, on AWS, --role-arn) are given; "
              "off: parallel calls.")  # fmt: skip
@click.option("--bucket", help="S3 bucket for the registration task's input file "
              "(made in the region if missing).")  # fmt: skip
@click.option("--role-arn", help="IAM role AWS IoT assumes to read the input file "
              "[default with --local: none needed].")  # fmt: skip
@click.option("--observer/--no-observer", default=True, show_default=True,
              help="Also make the observer `iotdr sim run --target aws` counts telemetry "
              "with: a certificate whose policy allows connecting as OBSERVER_ID-* and "
              "subscribing to iotdr/sim/+/telemetry.")  # fmt: skip
@click.option("--observer-id", default=DEFAULT_OBSERVER_ID, show_default=True,
              callback=_observer_id, help="The observer's client ID stem (letters, digits, "
              "- _ . :).")  # fmt: skip
def bulk_provision(**options: Any) -> None:
    """Provision COUNT devices BASE0..BASE{COUNT-1} in the primary (or --region): keys, things.

    Keys and CSRs in parallel, then certificates (AWS's CA), the device policy and
    the things: through one bulk registration task (--bulk-registration, --bucket,
    --role-arn), or by quota-aware parallel calls. Then the drill's observer (unless
    --no-observer): its key, certificate and policy, no thing. Writes
    BASE-%Y-%m-%d_%H-%M-%S/ with results.json and the key files (0600), the
    directory `iotdr sim run --target aws` takes. Run it again to continue an
    interrupted run. Exit 1 when a device or the observer could not be provisioned.
    """
    from replicator.tools._bulk import BulkRun  # noqa: PLC0415
    from replicator.tools._progress import Progress  # noqa: PLC0415

    regions = connect(options)
    client = regions.client(regions.primary.region)
    run = BulkRun.open(options["out_dir"], options["base"], options["count"], client.region,
                       algorithm=options["key_algorithm"], fresh=options["fresh"])  # fmt: skip
    run.want_observer(options["observer_id"] if options["observer"] else None)
    method = _provisioning_method(options, client, local=bool(regions.local),
                                  pending=run.pending_task is not None)  # fmt: skip
    status = "in_progress"
    try:
        with Progress("keys and CSRs", total=options["count"]) as progress:
            run.generate_keys(processes=options["processes"], progress=progress)
        todo = options["count"] - len(run.devices)
        with Progress("provisioning", total=todo) as progress:
            if method is None:
                run.provision(client, workers=options["workers"], progress=progress)
            else:
                run.register_in_bulk(client, bucket=method[0], role_arn=method[1],
                                     progress=progress)  # fmt: skip
        run.make_observer(client)
        status = "complete" if not run.failures and not run.observer_error else "in_progress"
    except KeyboardInterrupt:
        run.save(force=True, status="in_progress")
        click.echo(
            f"iotdr: interrupted: {len(run.devices)} of {run.count} devices provisioned in "
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
        "method": "parallel calls" if method is None else "bulk registration",
        "throttled": throttled,
        "observer": _observer_summary(run),
    }
    lines = [f"FAILED {f['thingName']}: {f['error']}" for f in failures]
    if run.observer_error is not None:
        lines.append(f"FAILED observer: {run.observer_error}")
    elif run.observer is not None:
        observer = run.observer
        line = (f"observer {observer.client_id}: certificate {observer.certificate_id[:12]}, "
                f"policy {observer.policy}")  # fmt: skip
        if run.observer_replication == "asked":
            line += "; asked the replicator to copy it to the secondary (iotdr/replicate)"
        elif run.observer_replication is not None:
            why = run.observer_replication.removeprefix("not asked: ")
            line += (
                f"; could not ask the replicator to copy it ({why}): it does at its next "
                "reconcile, or publish "
                f'{{"kind": "certificate", "name": "{observer.certificate_id}"}} to iotdr/replicate'
            )
        lines.append(line)
    lines.append(
        f"{run.directory}: provisioned {len(run.devices)} of {run.count} in {client.region}"
        f"{' (resumed)' if run.resumed else ''} by {summary['method']}; "
        f"keys and CSRs {summary['keys_s']} s, "
        f"provisioning {summary['provision_s']} s; throttled {sum(throttled.values())}"
    )
    emit(options, summary, "\n".join(lines), regions=regions)
    fail_if(bool(run.failures) or run.observer_error is not None)


def _observer_summary(run: Any) -> dict[str, Any] | None:
    observer = run.observer
    if observer is None:
        return None
    if run.observer_error is not None:
        return {"client_id": observer.client_id, "error": run.observer_error}
    return {"client_id": observer.client_id, "certificate_id": observer.certificate_id,
            "policy": observer.policy, "replication": run.observer_replication}  # fmt: skip


# What the local regions take as the role: they do not check it (there is no IAM there).
LOCAL_ROLE = "arn:aws:iam::123456789012:role/iotdr-local-bulk-registration"


def _provisioning_method(
    options: dict[str, Any], client: Any, *, local: bool, pending: bool
) -> tuple[str, str] | None:
    """(bucket, role ARN) to register through a bulk registration task; None: parallel calls."""
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.tools._bulk_registration import available  # noqa: PLC0415

    mode, bucket = options["bulk_mode"], options["bucket"]
    role = options["role_arn"] or (LOCAL_ROLE if local else None)
    if mode == "off":
        if pending:
            raise ConfigError(
                "this run has a bulk registration task to collect: run it again without "
                "--bulk-registration off (or pass --new)"
            )
        return None
    if pending:  # a task was started: collect it, whatever the flags say
        return bucket or "", role or ""
    if not bucket or not role:
        if mode == "on":
            raise ConfigError(
                "--bulk-registration on needs --bucket (the input file's S3 bucket) and "
                "--role-arn (a role AWS IoT may assume to read it); see docs/tools.md"
            )
        return None
    if not available(client):
        if mode == "on":
            raise ConfigError(
                f"{client.region}: the endpoint has no bulk registration "
                "(StartThingRegistrationTask): run with --bulk-registration off or auto"
            )
        return None
    return bucket, role


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
