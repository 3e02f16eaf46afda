"""``iotdr replicator jitr``: the secondary region's JITR handler as a service, or one sweep.

Registered on the ``replicator`` group by ``replicator/cli.py``, whose conventions it
follows (click alone at the top; results on stdout, logs on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from replicator.runtime._jitr import JitrHandler
    from replicator.runtime._settings import Settings

__all__ = ["replicator_jitr"]


@click.command("jitr")
@click.option(
    "--region",
    required=True,
    envvar="IOTDR_SECONDARY_REGION",
    help="The region whose JITR'd certificates to activate (the secondary).",
)
@click.option(
    "--endpoint-url",
    envvar="IOTDR_SECONDARY_ENDPOINT_URL",
    help="The region's iot endpoint: local regions or any compatible one.",
)
@click.option("--account-id", envvar="IOTDR_SECONDARY_ACCOUNT_ID")
@click.option(
    "--feed",
    envvar="IOTDR_JITR_FEED",
    help="The region's MQTT broker, HOST:PORT, for the registration events; "
    "without it the handler relies on its sweeps.",
)
@click.option("--feed-client-id", default="iotdr-jitr", show_default=True)
@click.option("--feed-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--feed-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--feed-key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--policy",
    "policy_name",
    required=True,
    envvar="IOTDR_JITR_POLICY",
    help="The policy attached to every activated certificate.",
)
@click.option(
    "--policy-document",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The policy's document (JSON), to create the policy where it is missing.",
)
@click.option(
    "--thing-name",
    default="cn",
    show_default=True,
    help="'cn' (the certificate's subject CN) or a template of {cn}, {certificate_id}, "
    "{ca_certificate_id}.",
)
@click.option(
    "--ca",
    "cas",
    multiple=True,
    help="A CA certificate id whose certificates may be activated (repeatable; default: "
    "every ACTIVE CA registered in the region with auto-registration on).",
)
@click.option(
    "--primary-region",
    envvar="IOTDR_PRIMARY_REGION",
    help="The primary region, asked (DescribeCertificate) before each activation: a "
    "certificate REVOKED or INACTIVE there is set so here instead of activated; unknown "
    "there is refused; throttled or unreachable: kept queued (see --primary-check).",
)
@click.option(
    "--primary-check",
    type=click.Choice(["required", "best-effort"]),
    default="required",
    show_default=True,
    envvar="IOTDR_JITR_PRIMARY_CHECK",
    help="best-effort: a primary that does not answer at all (connection refused, reset, "
    "timed out) is taken for down and the certificate activated, logged.",
)
@click.option(
    "--allow-rotation",
    is_flag=True,
    envvar="IOTDR_JITR_ALLOW_ROTATION",
    help="Attach a certificate to a thing that already has another ACTIVE certificate "
    "(by default refused and reported: a CA-signed certificate with another device's CN "
    "would take over its thing).",
)
@click.option(
    "--primary-endpoint-url",
    envvar="IOTDR_PRIMARY_ENDPOINT_URL",
    help="The primary's iot endpoint (with --primary-region).",
)
@click.option(
    "--journal",
    "journal_path",
    envvar="IOTDR_JITR_JOURNAL",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The SQLite journal (its 'jitr' queue): queued certificates survive a restart. "
    "Required unless --once.",
)
@click.option(
    "--sweep-interval",
    "sweep_interval_s",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between sweeps for PENDING_ACTIVATION certificates; 0: never.",
)
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--max-attempts",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Attempts before a certificate that keeps failing (not throttling, not an outage) "
    "is dead-lettered.",
)
@click.option(
    "--listen",
    default="127.0.0.1:9465",
    show_default=True,
    envvar="IOTDR_JITR_LISTEN",
    help="HOST:PORT of /healthz, /readyz and /metrics (Prometheus); 'off': none.",
)
@click.option("--once", is_flag=True, help="Sweep once, handle what it found, and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one line per event).")
def replicator_jitr(**options: Any) -> None:
    """Activate JITR'd certificates in the secondary region until SIGTERM or SIGINT.

    With --once: exit code 1 when a certificate could not be activated (still
    queued for a retry, or dead-lettered).
    """
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.core._jitr_plan import JITR_TOPIC  # noqa: PLC0415
    from replicator.runtime._build import build  # noqa: PLC0415
    from replicator.runtime._feed import FeedConfig, MqttFeed  # noqa: PLC0415
    from replicator.runtime._host import run_jitr_service  # noqa: PLC0415
    from replicator.runtime._http import parse_listen  # noqa: PLC0415

    if options["journal_path"] is None and not options["once"]:
        raise ConfigError("--journal is required unless --once")
    feed_config = None
    if options["feed"] and not options["once"]:
        feed_config = FeedConfig.from_options(
            options,
            flag="--feed",
            address=options["feed"],
            region=options["region"],
            topics=(JITR_TOPIC,),
        )
    listen = parse_listen(options["listen"])

    def report(line: dict[str, Any]) -> None:
        if options["as_json"]:
            click.echo(json.dumps(line, sort_keys=True, default=str))

    with build(_settings(options)) as runtime:
        handler = runtime.jitr
        assert handler is not None
        if options["once"]:
            _once(handler, as_json=options["as_json"])
        else:
            feed = MqttFeed(feed_config, handler.journal) if feed_config is not None else None
            run_jitr_service(handler, feed, report=report, listen=listen)


def _settings(options: dict[str, Any]) -> Settings:
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.aws._calls import RegionConfig  # noqa: PLC0415
    from replicator.core._jitr_plan import JitrConfig  # noqa: PLC0415
    from replicator.runtime._settings import Settings  # noqa: PLC0415

    document: str | None = None
    if options["policy_document"] is not None:
        try:
            document = options["policy_document"].read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--policy-document: {exc}") from None
    return Settings(
        secondary=RegionConfig(
            region=options["region"],
            endpoint_url=options["endpoint_url"],
            account_id=options["account_id"],
        ),
        jitr=JitrConfig(
            policy_name=options["policy_name"],
            policy_document=document,
            thing_name=options["thing_name"],
            allowed_cas=frozenset(options["cas"]) if options["cas"] else None,
            primary_region=options["primary_region"] or None,
            primary_endpoint_url=options["primary_endpoint_url"] or None,
            primary_check=options["primary_check"],
            allow_rotation=options["allow_rotation"],
            workers=options["workers"],
            max_attempts=options["max_attempts"],
            sweep_interval_s=options["sweep_interval_s"],
        ),
        journal=str(options["journal_path"] or ":memory:"),
        check_credentials=True,
    )


def _once(handler: JitrHandler, *, as_json: bool) -> None:
    summary = handler.sweep_and_drain()
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(
            f"{summary['region']}: {summary['swept']} pending certificate(s) found; "
            f"{summary['activated']} activated, {summary['refused']} refused, "
            f"{summary['mirrored']} set as in the primary, {summary['left_alone']} left alone; "
            f"{summary['pending']} still queued, {summary['dead']} dead"
        )
    if summary["pending"] or summary["dead"]:
        raise click.exceptions.Exit(1)
