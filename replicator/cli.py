"""The ``iotdr replicator`` and ``iotdr tools`` command groups.

This module imports only click at the top so that ``iotdr --help`` stays
fast; each command imports what it needs when it runs.

Conventions (see ``device_agent/cli.py``): results on stdout (``--json`` for
machine output), logs on stderr; exit 0 on success, 1 when a check found a
problem (drift in a dry run), 2 for usage, configuration and environment
errors, which reach the user as one line (errors carry an ``exit_code``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from replicator.core._state import Kind
    from replicator.runtime._settings import Settings

__all__ = ["replicator", "tools"]

_KINDS: tuple[Kind, ...] = ("thingType", "thingGroup", "policy", "certificate", "thing", "shadow")


@click.group()
def replicator() -> None:
    """Replicate the registry and shadows between regions (the sidecar service)."""


@click.group()
def tools() -> None:
    """Operator tools: provisioning, comparison, search and lookup across regions."""


def _quota(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    del ctx, param
    found: dict[str, float] = {}
    for value in values:
        api, sep, rate = value.partition("=")
        try:
            found[api.strip()] = float(rate)
        except ValueError:
            sep = ""
        if not sep or not api.strip() or found.get(api.strip(), 0) <= 0:
            raise click.BadParameter(f"{value!r} is not API=TPS with a positive TPS")
    return found


def _connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``run`` and ``reconcile``: regions, endpoints, mode, quotas."""
    options = [
        click.option("--primary-region", required=True, envvar="IOTDR_PRIMARY_REGION"),
        click.option("--secondary-region", required=True, envvar="IOTDR_SECONDARY_REGION"),
        click.option(
            "--primary-endpoint-url",
            envvar="IOTDR_PRIMARY_ENDPOINT_URL",
            help="The primary's iot (and iot-data) endpoint: local regions or any compatible one.",
        ),
        click.option("--secondary-endpoint-url", envvar="IOTDR_SECONDARY_ENDPOINT_URL"),
        click.option(
            "--primary-data-endpoint-url",
            envvar="IOTDR_PRIMARY_DATA_ENDPOINT_URL",
            help="The primary's iot-data endpoint, when not --primary-endpoint-url.",
        ),
        click.option("--secondary-data-endpoint-url", envvar="IOTDR_SECONDARY_DATA_ENDPOINT_URL"),
        click.option("--primary-account-id", envvar="IOTDR_PRIMARY_ACCOUNT_ID"),
        click.option(
            "--secondary-account-id",
            envvar="IOTDR_SECONDARY_ACCOUNT_ID",
            help="The secondary's account, for policy ARNs (default: learnt, else the primary's).",
        ),
        click.option(
            "--direction",
            type=click.Choice(["primary-to-secondary", "secondary-to-primary"]),
            default="primary-to-secondary",
            show_default=True,
            envvar="IOTDR_REPLICATOR_DIRECTION",
            help="secondary-to-primary: failback, copying back only what changed in the "
            "secondary since the regions were last in sync.",
        ),
        click.option(
            "--mode",
            type=click.Choice(["complete", "jitr"]),
            default="complete",
            show_default=True,
            envvar="IOTDR_REPLICATOR_MODE",
            help="complete: certificates and policies too; jitr: registry and shadows only.",
        ),
        click.option(
            "--quota",
            "quotas",
            multiple=True,
            callback=_quota,
            help="API=TPS, repeatable: override AWS's default rate of an API ('default' for "
            "unlisted APIs).",
        ),
        click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256)),
        click.option(
            "--thing-recheck",
            "thing_recheck_s",
            default=30.0,
            show_default=True,
            type=click.FloatRange(0),
            help="Apply a created thing again after this many seconds (its certificate is "
            "attached without an event); 0: never.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _source_role(options: dict[str, Any]) -> str:
    """The role of the region changes are copied from: the secondary when failing back."""
    return "secondary" if options.get("direction") == "secondary-to-primary" else "primary"


def _settings(
    options: dict[str, Any],
    *,
    journal: str = ":memory:",
    keep_target_changes: bool = False,
    both_ways: bool = False,
    delete_target_only: bool = False,
) -> Settings:
    """The composition root's settings from the command's options (flags, env, TOML)."""
    from replicator.aws._calls import RegionConfig  # noqa: PLC0415
    from replicator.runtime._engine import EngineConfig  # noqa: PLC0415
    from replicator.runtime._quotas import QuotaConfig  # noqa: PLC0415
    from replicator.runtime._settings import Settings  # noqa: PLC0415

    primary, secondary = (RegionConfig.of_role(options, role) for role in ("primary", "secondary"))
    return Settings(
        primary=primary,
        secondary=secondary,
        engine=EngineConfig(
            mode=options["mode"],
            workers=options["workers"],
            thing_recheck_s=options["thing_recheck_s"] or None,
            direction="failback" if _source_role(options) == "secondary" else "forward",
            keep_target_changes=keep_target_changes,
            both_ways=both_ways,
            delete_target_only=delete_target_only,
        ),
        quotas=QuotaConfig.with_overrides(options["quotas"]),
        journal=journal,
        check_credentials=True,
    )


def _config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Load ``--config`` into the command's default map (command line > env > file)."""
    del param
    if value is not None:
        from replicator._config import load_default_map  # noqa: PLC0415

        ctx.default_map = {**(ctx.default_map or {}), **load_default_map(value, ctx)}


_config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="IOTDR_REPLICATOR_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=_config_file,
    help="TOML file of option defaults (long names as keys, [quota] table of API = TPS).",
)


@replicator.command("reconcile")
@_config_option
@_connection_options
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(_KINDS),
    help="Compare only these kinds (repeatable; default all).",
)
@click.option(
    "--journal",
    "journal_path",
    envvar="IOTDR_REPLICATOR_JOURNAL",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The service's journal: the sync points, and where scheduled steps go "
    "(required with --direction secondary-to-primary).",
)
@click.option(
    "--keep-target-changes",
    is_flag=True,
    help="Leave objects that changed only in the secondary since the last sync, and "
    "devices registered only there (what failback copies back), instead of overwriting "
    "or deleting them; needs --journal. For scheduled reconciles next to --failback auto.",
)
@click.option(
    "--delete-target-only",
    is_flag=True,
    help="Delete objects that exist only in the secondary although the journal does not "
    "show they were replicated there (by default they are kept and reported: they may be "
    "devices JITR or an operator registered there during an outage).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replicator_reconcile(**options: Any) -> None:
    """Diff both regions completely and repair the target (unless --dry-run).

    Exit code 1 when a dry run found drift, or when an object could not be compared.
    """
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.runtime._build import build  # noqa: PLC0415
    from replicator.runtime._reconcile import reconcile  # noqa: PLC0415

    failback = _source_role(options) == "secondary"
    if (failback or options["keep_target_changes"]) and not options["journal_path"]:
        flag = "--direction secondary-to-primary" if failback else "--keep-target-changes"
        raise ConfigError(
            f"{flag} needs the service's --journal (its sync points tell what changed where)"
        )
    journal = str(options["journal_path"] or ":memory:")
    keep, delete = options["keep_target_changes"], options["delete_target_only"]
    if keep and delete:
        raise ConfigError("--keep-target-changes and --delete-target-only contradict each other")
    settings = _settings(
        options, journal=journal, keep_target_changes=keep, delete_target_only=delete
    )
    with build(settings) as runtime:
        assert runtime.engine is not None
        report = reconcile(
            runtime.engine,
            dry_run=options["dry_run"],
            kinds=options["kinds"] or _KINDS,
            workers=options["workers"],
        )
    if options["as_json"]:
        click.echo(json.dumps(report.as_dict(), sort_keys=True, default=str))
    else:
        click.echo(report.text())
    if report.errors or (options["dry_run"] and report.drift):
        raise click.exceptions.Exit(1)


@replicator.command("run")
@_config_option
@_connection_options
@click.option(
    "--feed",
    required=True,
    envvar="IOTDR_REPLICATOR_FEED",
    help="The source region's MQTT broker, HOST:PORT: registry events and shadow documents "
    "(the secondary's with --direction secondary-to-primary).",
)
@click.option("--feed-client-id", default="iotdr-replicator", show_default=True)
@click.option("--feed-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--feed-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--feed-key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--journal",
    "journal_path",
    required=True,
    envvar="IOTDR_REPLICATOR_JOURNAL",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The SQLite journal: accepted changes survive a restart.",
)
@click.option(
    "--listen",
    default="127.0.0.1:9464",
    show_default=True,
    envvar="IOTDR_REPLICATOR_LISTEN",
    help="HOST:PORT of /healthz, /readyz and /metrics (Prometheus); 'off': none.",
)
@click.option(
    "--failback",
    type=click.Choice(["off", "auto"]),
    default="off",
    show_default=True,
    envvar="IOTDR_REPLICATOR_FAILBACK",
    help="auto: also copy back what changes in the secondary (fed by --failback-feed), and "
    "run a full failback pass whenever the primary returns from an outage.",
)
@click.option(
    "--failback-feed",
    envvar="IOTDR_REPLICATOR_FAILBACK_FEED",
    help="The secondary's MQTT broker, HOST:PORT, for --failback auto (same TLS flags).",
)
@click.option(
    "--anti-entropy-interval",
    "anti_entropy_s",
    default=21600.0,
    show_default=True,
    type=click.FloatRange(0),
    envvar="IOTDR_REPLICATOR_ANTI_ENTROPY_INTERVAL",
    help="Seconds between background reconcile passes (at most a fifth of each API's quota; "
    "the first soon after start when the journal shows the service was down over an hour); "
    "0: none.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per lifecycle event.")
def replicator_run(**options: Any) -> None:
    """Replicate changes, primary to secondary (and back with --failback auto), until SIGTERM.

    With --direction secondary-to-primary it fails back instead, fed by the
    secondary's broker, copying back only what changed there since the last sync.
    """
    from replicator._errors import ConfigError  # noqa: PLC0415
    from replicator.runtime._build import build  # noqa: PLC0415
    from replicator.runtime._failback import AutoFailback  # noqa: PLC0415
    from replicator.runtime._feed import FeedConfig  # noqa: PLC0415
    from replicator.runtime._host import run_service  # noqa: PLC0415
    from replicator.runtime._http import parse_listen  # noqa: PLC0415

    auto, source = options["failback"] == "auto", _source_role(options)
    if auto and source == "secondary":
        raise ConfigError("--failback auto runs both directions: leave --direction at its default")
    if auto and not options["failback_feed"]:
        raise ConfigError(
            "--failback auto needs --failback-feed HOST:PORT (the secondary's broker)"
        )
    region = options[f"{source}_region"]
    feed = FeedConfig.from_options(options, flag="--feed", address=options["feed"], region=region)

    def report(line: dict[str, Any]) -> None:
        if options["as_json"]:
            click.echo(json.dumps(line, sort_keys=True, default=str))

    listen = parse_listen(options["listen"])
    settings = _settings(options, journal=str(options["journal_path"]), both_ways=auto)
    with build(settings) as runtime:
        engine = runtime.engine
        assert engine is not None
        failback = None
        if runtime.failback is not None:
            back_feed = FeedConfig.from_options(
                options,
                flag="--failback-feed",
                address=options["failback_feed"],
                region=options["secondary_region"],
            )
            auto_failback = AutoFailback(
                engine, runtime.failback, report=report, workers=options["workers"]
            )
            failback = (auto_failback, back_feed)
        anti_entropy = None
        if options["anti_entropy_s"] and source == "primary":
            from replicator.runtime._anti_entropy import (  # noqa: PLC0415
                AntiEntropy,
                AntiEntropyConfig,
            )

            anti_entropy = AntiEntropy(
                engine,
                AntiEntropyConfig(interval_s=options["anti_entropy_s"]),
                limiter=runtime.limiter,
            )
        run_service(
            engine,
            feed,
            report=report,
            listen=listen,
            failback=failback,
            anti_entropy=anti_entropy,
        )


@replicator.command("iam-policy")
@click.option(
    "--identity",
    type=click.Choice(["replicator", "jitr", "health-probe", "region-setup"]),
    default="replicator",
    show_default=True,
    help="Whose policy: the replicator, the JITR handler, the end-to-end health probe's "
    "certificate (an AWS IoT policy), or the region template's events-and-indexing setup.",
)
@click.option(
    "--runtime",
    type=click.Choice(["service", "lambda"]),
    default="service",
    show_default=True,
    help="service: fed over MQTT (ECS, Kubernetes); lambda: fed by an IoT rule (and the "
    "replicator's SQS queue).",
)
@click.option("--primary-region", envvar="IOTDR_PRIMARY_REGION")
@click.option("--secondary-region", envvar="IOTDR_SECONDARY_REGION")
@click.option("--account-id", default="*", show_default=True)
@click.option(
    "--feed-client-id",
    help="The MQTT client id of the feed, or of the health probe (a trailing * allowed) "
    "[default: iotdr-replicator, iotdr-jitr, iotdr-health-probe-*].",
)
@click.option(
    "--failback",
    is_flag=True,
    help="Also write the primary and read the secondary's feed (failback, --failback auto).",
)
@click.option("--jitr", is_flag=True, help="Same as --identity jitr.")
@click.option("--queue-arn", help="The change queue the replicator Lambda consumes.")
@click.option("--log-group-arn", help="A Lambda's log group [default: /aws/lambda/iotdr-ID].")
@click.option("--partition", default="aws", show_default=True)
@click.option(
    "--format",
    "output",
    type=click.Choice(["json", "cloudformation"]),
    default="json",
    show_default=True,
    help="cloudformation: Fn::Sub where a value holds ${...} (give ${AWS::AccountId} ...).",
)
def replicator_iam_policy(**options: Any) -> None:
    """Print the least-privilege policy document of one identity of a deployment."""
    from replicator.aws._iam import (  # noqa: PLC0415
        PolicyRequest,
        cloudformation_policy,
        policy_document,
    )

    document = policy_document(
        PolicyRequest(
            identity="jitr" if options["jitr"] else options["identity"],
            runtime=options["runtime"],
            primary_region=options["primary_region"] or None,
            secondary_region=options["secondary_region"] or None,
            account_id=options["account_id"],
            partition=options["partition"],
            failback=options["failback"],
            client_id=options["feed_client_id"],
            queue_arn=options["queue_arn"],
            log_group_arn=options["log_group_arn"],
        )
    )
    if options["output"] == "cloudformation":
        document = cloudformation_policy(document)
    click.echo(json.dumps(document, indent=2))


def _register_commands() -> None:
    """Commands in modules of their own (each imports only click at the top, as this one).

    ``iotdr replicator jitr`` (``_jitr_cli.py``), ``iotdr replicator dead-letters``
    (``_dead_letters_cli.py``) and ``iotdr tools ...`` (``replicator/tools/_cli.py``).
    """
    from replicator._dead_letters_cli import dead_letters  # noqa: PLC0415
    from replicator._jitr_cli import replicator_jitr  # noqa: PLC0415
    from replicator.tools._cli import COMMANDS  # noqa: PLC0415

    replicator.add_command(replicator_jitr)
    replicator.add_command(dead_letters)
    for command in COMMANDS:
        tools.add_command(command)


_register_commands()
