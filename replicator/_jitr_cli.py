"""``iotdr replicator jitr``: the secondary region's JITR handler as a service, or one sweep.

Registered on the ``replicator`` group by ``replicator/cli.py``. Like the other
commands it imports only click at the top; boto3, paho and the journal are
imported when it runs. Results go to stdout (``--json`` for machine output),
logs to stderr.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator._feed import FeedConfig, MqttFeed
    from replicator._jitr import JitrHandler

__all__ = ["replicator_jitr", "serve"]

_STATS_INTERVAL_S = 60.0


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
    "certificate REVOKED or INACTIVE there is set so here instead of activated. Unknown "
    "there, or the primary unreachable: activated, with a log line.",
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
@click.option("--once", is_flag=True, help="Sweep once, handle what it found, and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one line per event).")
def replicator_jitr(**options: Any) -> None:
    """Activate JITR'd certificates in the secondary region until SIGTERM or SIGINT.

    With --once: exit code 1 when a certificate could not be activated (still
    queued for a retry, or dead-lettered).
    """
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator._journal import Journal  # noqa: PLC0415

    journal_path = options["journal_path"]
    if journal_path is None and not options["once"]:
        raise ConfigError("--journal is required unless --once")
    feed_config = _feed_config(options) if options["feed"] and not options["once"] else None

    def report(line: dict[str, Any]) -> None:
        if options["as_json"]:
            click.echo(json.dumps(line, sort_keys=True, default=str))

    with Journal(journal_path or ":memory:", queue="jitr") as journal:
        handler = _handler(options, journal)
        if options["once"]:
            _once(handler, as_json=options["as_json"])
        else:
            from replicator._feed import MqttFeed  # noqa: PLC0415

            feed = MqttFeed(feed_config, journal) if feed_config is not None else None
            serve(handler, feed, report=report)


def _handler(options: dict[str, Any], journal: Any) -> JitrHandler:
    from replicator._aws import RegionConfig, build_region  # noqa: PLC0415
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator._jitr import (  # noqa: PLC0415
        Boto3JitrRegion,
        JitrConfig,
        JitrHandler,
        build_primary,
    )
    from replicator._quotas import QuotaLimiter  # noqa: PLC0415

    document: str | None = None
    if options["policy_document"] is not None:
        try:
            document = options["policy_document"].read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--policy-document: {exc}") from None
    config = JitrConfig(
        policy_name=options["policy_name"],
        policy_document=document,
        thing_name=options["thing_name"],
        allowed_cas=frozenset(options["cas"]) if options["cas"] else None,
        primary_region=options["primary_region"] or None,
        primary_endpoint_url=options["primary_endpoint_url"] or None,
        workers=options["workers"],
        max_attempts=options["max_attempts"],
        sweep_interval_s=options["sweep_interval_s"],
    )
    limiter = QuotaLimiter()
    region = build_region(
        RegionConfig(
            region=options["region"],
            endpoint_url=options["endpoint_url"],
            account_id=options["account_id"],
        ),
        limiter=limiter,
        check_credentials=True,
    )
    return JitrHandler(
        Boto3JitrRegion(region), journal, config, primary=build_primary(config, limiter)
    )


def _feed_config(options: dict[str, Any]) -> FeedConfig:
    from replicator._feed import FeedConfig  # noqa: PLC0415
    from replicator._jitr import JITR_TOPIC  # noqa: PLC0415

    return FeedConfig.from_options(
        options,
        flag="--feed",
        address=options["feed"],
        region=options["region"],
        topics=(JITR_TOPIC,),
    )


def _once(handler: JitrHandler, *, as_json: bool) -> None:
    swept = handler.sweep()
    handler.drain()
    counts = handler.journal.counts(handler.now())
    stats = handler.stats
    summary = {
        "region": handler.region.region,
        "swept": swept,
        "activated": stats.activated,
        "refused": stats.refused,
        "mirrored": stats.mirrored,
        "left_alone": stats.left_alone,
        "pending": counts.pending,
        "dead": counts.dead,
        "writes": dict(sorted(stats.writes.items())),
    }
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(
            f"{summary['region']}: {swept} pending certificate(s) found; "
            f"{stats.activated} activated, {stats.refused} refused, "
            f"{stats.mirrored} set as in the primary, {stats.left_alone} left alone; "
            f"{counts.pending} still queued, {counts.dead} dead"
        )
    if counts.pending or counts.dead:
        raise click.exceptions.Exit(1)


def serve(
    handler: JitrHandler,
    feed: MqttFeed | None,
    *,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
) -> None:
    """Run the feed (when given; it journals into the handler's queue) and the handler.

    Until ``stop`` is set, or SIGTERM or SIGINT arrive (in the main thread).

    Raises:
        ReplicatorError: the feed's journal failed, or a permission is missing.
    """
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    if feed is not None:
        feed.start()
    report(
        {
            "event": "jitr.started",
            "region": handler.region.region,
            "policy": handler.config.policy_name,
            "feed": f"{feed.config.host}:{feed.config.port}" if feed is not None else None,
            "journal": handler.journal.path,
        }
    )

    def watch() -> None:
        waited = 0.0
        while not stop.wait(1.0):
            if feed is not None and feed.failed is not None:
                stop.set()
            waited += 1.0
            if waited >= _STATS_INTERVAL_S:
                waited = 0.0
                report({"event": "jitr.stats", **_status(handler, feed)})

    watcher = threading.Thread(target=watch, name="jitr-watch", daemon=True)
    watcher.start()
    try:
        handler.run(stop)
    finally:
        stop.set()
        if feed is not None:
            feed.stop()
        watcher.join()
        for signum, previous_handler in previous.items():
            signal.signal(signum, previous_handler)
        report({"event": "jitr.stopped", **_status(handler, feed)})
    if feed is not None and feed.failed is not None:
        raise feed.failed


def _status(handler: JitrHandler, feed: MqttFeed | None) -> dict[str, Any]:
    counts = handler.journal.counts(handler.now())
    status: dict[str, Any] = {
        **handler.stats.as_dict(),
        "pending": counts.pending,
        "due": counts.due,
        "queued_dead": counts.dead,
        "oldest_pending_s": round(counts.oldest_pending_s, 3),
    }
    if feed is not None:
        counters = feed.counters
        status["feed"] = {name: getattr(counters, name) for name in counters.__dataclass_fields__}
        status["subscribed"] = feed.subscribed
    return status
