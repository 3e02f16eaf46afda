"""The ``iotdr`` command: the root, its shared options, and the ``agent`` group.

The root names no package but this one: its sub-command groups (``agent``,
``replicator``, ``tools``, ``sim``) are found through the ``iotdr.commands``
entry points, so a firmware image with the required dependencies alone still
runs ``iotdr agent`` and is told which extra to install for the others.

Conventions for every command: results on stdout (``--json`` for machine
output), logs on stderr; exit 0 on success, 1 when a check or comparison found
a problem, 2 for usage, configuration and environment errors. An expected
failure (an error with an ``exit_code``) is one line on stderr, never a
traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import click

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["agent", "configure_logging", "emit", "main", "root"]

_F = TypeVar("_F", bound="Callable[..., Any]")
_ENTRY_POINT_GROUP = "iotdr.commands"
_GROUP_ORDER = ("agent", "replicator", "tools", "sim")
_EXTRA_HINT = {"agent": "", "replicator": "replicator", "tools": "replicator", "sim": "sim"}

# Attributes of a LogRecord that are not ``extra=`` fields.
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class _JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, and the ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    """``time level event key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():7} "
        line += f"{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """Send logs to stderr: text for people, JSON lines for services. Entry points only.

    Replaces a handler installed by an earlier call; leaves other handlers alone.
    """
    handler = _StderrHandler()
    handler.setFormatter(_JSONFormatter() if json_lines else _TextFormatter())
    root_logger = logging.getLogger()
    for old in [h for h in root_logger.handlers if isinstance(h, _StderrHandler)]:
        root_logger.removeHandler(old)
    root_logger.addHandler(handler)
    root_logger.setLevel(level.upper())
    # boto3 says "Found credentials in ..." at INFO for every client it builds: noise in
    # a service's logs. Their warnings still show; --log-level debug shows everything.
    chatty = logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(chatty)


def emit(result: object, *, as_json: bool, text: str | None = None) -> None:
    """Print a command's result on stdout: JSON with ``--json``, else ``text``."""
    if as_json:
        click.echo(json.dumps(result, indent=None, sort_keys=True, default=str))
    else:
        click.echo(text if text is not None else json.dumps(result, indent=2, default=str))


class _EntryPointGroup(click.Group):
    """The root group: sub-command groups come from the ``iotdr.commands`` entry points."""

    _cache: ClassVar[dict[str, click.Command]] = {}

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        found = {ep.name: ep for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP)}
        if "agent" not in found:  # running from a source tree without installing
            found["agent"] = metadata.EntryPoint(
                name="agent", value=f"{__name__}:agent", group=_ENTRY_POINT_GROUP
            )
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 - click's API
        names = set(self._entry_points()) | set(self.commands)
        return sorted(names, key=lambda n: (_GROUP_ORDER.index(n) if n in _GROUP_ORDER else 99, n))

    def get_command(
        self,
        ctx: click.Context,  # noqa: ARG002 - click's API
        cmd_name: str,
    ) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in self._cache:
            return self._cache[cmd_name]
        entry_point = self._entry_points().get(cmd_name)
        if entry_point is None:
            return None
        try:
            command = entry_point.load()
        except ImportError as exc:
            command = _missing_extra(cmd_name, exc)
        if not isinstance(command, click.Command):
            return None
        self._cache[cmd_name] = command
        return command


def _missing_extra(name: str, exc: ImportError) -> click.Command:
    extra = _EXTRA_HINT.get(name) or "all"
    hint = f"`iotdr {name}` needs the '{extra}' extra: pip install 'iotdr[{extra}]' ({exc})"

    @click.command(
        name=name,
        help=f"(not installed: pip install 'iotdr[{extra}]')",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def unavailable(args: tuple[str, ...]) -> None:
        del args
        raise click.UsageError(hint)

    return unavailable


@click.group(cls=_EntryPointGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log level written to stderr.",
)
@click.option("--log-json", is_flag=True, help="Write logs as JSON lines (for services).")
@click.version_option(package_name="iotdr", prog_name="iotdr")
def root(log_level: str, log_json: bool) -> None:
    """iotdr: multi-region disaster recovery for AWS IoT fleets.

    Results go to stdout (--json for machine output), logs to stderr. Exit
    codes: 0 success, 1 a check found a problem, 2 usage or configuration error.
    """
    configure_logging(log_level, json_lines=log_json)


@click.group()
def agent() -> None:
    """The failover-aware device agent (what devices run)."""


def _dns_server(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    del ctx, param
    from device_agent._config import split_host_port  # noqa: PLC0415
    from device_agent._errors import ConfigError  # noqa: PLC0415

    try:
        return None if value is None else split_host_port(value, 53)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


_dns_server_option = click.option(
    "--dns-server",
    callback=_dns_server,
    help="Ask this DNS server (HOST[:PORT]) instead of the system's.",
)


def _transport_option(default: str | None) -> Callable[[_F], _F]:
    return click.option(
        "--transport",
        type=click.Choice(["paho", "crt"]),
        default=default,
        show_default=default is not None,
        help="The MQTT client: paho-mqtt, or the AWS Common Runtime's MQTT 5 client "
        "(crt, needs the 'crt' extra)"
        + ("." if default is not None else "; default: [mqtt] transport of the configuration."),
    )


@agent.command("resolve")
@click.argument("name")
@_dns_server_option
@click.option("--txt-name", help="The roles TXT record (default: _NAME).")
@click.option("--timeout", "timeout_s", default=2.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def agent_resolve(
    name: str,
    dns_server: tuple[str, int] | None,
    txt_name: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Resolve NAME the way a device does: CNAME target, its region, the roles.

    Exit code 1 when DNS gives no usable answer (the reason is printed).
    """
    import asyncio  # noqa: PLC0415

    from device_agent._discovery import DnsDiscovery  # noqa: PLC0415
    from device_agent._errors import DiscoveryError  # noqa: PLC0415

    discovery = DnsDiscovery(
        name,
        txt_name=txt_name,
        nameservers=(dns_server[0],) if dns_server else (),
        port=dns_server[1] if dns_server else 53,
        timeout_s=timeout_s,
    )
    try:
        found = asyncio.run(discovery.discover())
    except DiscoveryError as exc:
        if as_json:
            emit({"name": name, "error": exc.kind, "detail": str(exc)}, as_json=True)
        else:
            click.echo(f"iotdr: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    result = {
        "name": found.name,
        "target": found.target,
        "region": found.region,
        "role": found.role,
        "primary": found.roles.primary,
        "secondary": found.roles.secondary,
        "addresses": list(found.addresses),
        "ttl": found.ttl,
    }
    emit(
        result,
        as_json=as_json,
        text=f"{found.name} -> {found.target} ({found.region}, {found.role}; "
        f"primary {found.roles.primary}, secondary {found.roles.secondary})",
    )


@agent.command("pubsub")
@click.option("--cname", help="The name to resolve (a CNAME to the serving region).")
@_dns_server_option
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    help="REGION=HOST[:PORT], repeatable: static endpoints, the fallback when DNS fails "
    "(the first is the primary when DNS cannot say).",
)
@click.option("--port", default=8883, show_default=True, help="Port for endpoints without one.")
@click.option("--root-ca", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--cert", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--client-id", required=True)
@click.option("--topic", help="Topic to publish to and subscribe to (default sdk/test/CLIENT_ID).")
@click.option("--count", default=10, show_default=True, type=click.IntRange(0))
@click.option("--interval", "interval_s", default=1.0, show_default=True, type=float)
@click.option("--dr-mode", is_flag=True, help="Follow the CNAME: move when it changes.")
@click.option(
    "--outbox",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Durable outbox file (SQLite); without it the queue is in memory.",
)
@click.option("--stability-window", "stability_window_s", type=float, help="Failback window (s).")
@click.option("--max-runtime", "max_runtime_s", type=float, help="Give up after this many seconds.")
@_transport_option("paho")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per event on stdout.")
def agent_pubsub(**options: Any) -> None:
    """Publish numbered QoS 1 messages through failovers; exit 0 once all are acknowledged."""
    import asyncio  # noqa: PLC0415

    from device_agent._pubsub import run_pubsub  # noqa: PLC0415

    config = _pubsub_config(options)
    topic = options["topic"] or f"sdk/test/{options['client_id']}"

    def report(line: dict[str, Any]) -> None:
        if options["as_json"]:
            click.echo(json.dumps(line, default=str))
        else:
            details = " ".join(f"{k}={v}" for k, v in line.items() if k != "event")
            click.echo(f"{line['event']:16} {details}")

    code = asyncio.run(
        run_pubsub(
            config,
            topic=topic,
            count=options["count"],
            interval_s=options["interval_s"],
            report=report,
            max_runtime_s=options["max_runtime_s"],
        )
    )
    if code:
        raise click.exceptions.Exit(code)


def _pubsub_config(options: dict[str, Any]) -> Any:
    from device_agent._config import (  # noqa: PLC0415
        AgentConfig,
        DiscoveryConfig,
        FailoverConfig,
        IdentityConfig,
        MQTTConfig,
        OutboxConfig,
    )
    from device_agent._endpoints import parse_endpoint  # noqa: PLC0415

    endpoints = [parse_endpoint(e, default_port=options["port"]) for e in options["endpoints"]]
    dns_server = options["dns_server"]
    failover = {"dr_mode": options["dr_mode"]}
    if options["stability_window_s"] is not None:
        failover["stability_window_s"] = options["stability_window_s"]
    return AgentConfig(
        identity=IdentityConfig(
            client_id=options["client_id"],
            cert_path=options["cert"],
            key_path=options["key"],
            ca_path=options["root_ca"],
        ),
        discovery=DiscoveryConfig(
            name=options["cname"],
            nameservers=(dns_server[0],) if dns_server else (),
            port=dns_server[1] if dns_server else 53,
            endpoints={e.region: e for e in endpoints},
            primary=endpoints[0].region if len(endpoints) >= 2 else None,
            secondary=endpoints[1].region if len(endpoints) >= 2 else None,
        ),
        failover=FailoverConfig(**failover),
        mqtt=MQTTConfig(port=options["port"], transport=options["transport"]),
        outbox=OutboxConfig(path=options["outbox"]),
    )


@agent.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The agent's TOML configuration (see docs/agent.md).",
)
@_transport_option(None)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per lifecycle event.")
def agent_run(config_path: Path, transport: Literal["paho", "crt"] | None, as_json: bool) -> None:
    """Run the agent as a daemon until SIGINT/SIGTERM, keeping a status file up to date."""
    import asyncio  # noqa: PLC0415
    import dataclasses  # noqa: PLC0415

    from device_agent._config import load_agent_config  # noqa: PLC0415
    from device_agent._daemon import run_daemon  # noqa: PLC0415

    config = load_agent_config(config_path)
    if transport is not None:
        mqtt = dataclasses.replace(config.mqtt, transport=transport)
        config = dataclasses.replace(config, mqtt=mqtt)

    def report(line: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(line, default=str))

    asyncio.run(run_daemon(config, report=report))


@agent.command("check")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The agent's TOML configuration (see docs/agent.md).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding.")
def agent_check(config_path: Path, as_json: bool) -> None:
    """Check a device's configuration, identity files and DNS records; one line per finding.

    Exit code 1 when anything is wrong (each problem on its own line), else 0.
    """
    import asyncio  # noqa: PLC0415

    from device_agent._check import Finding, check_agent  # noqa: PLC0415
    from device_agent._config import load_agent_config  # noqa: PLC0415
    from device_agent._errors import ConfigError  # noqa: PLC0415

    try:
        findings = asyncio.run(check_agent(load_agent_config(config_path)))
    except ConfigError as exc:
        findings = [Finding(False, "config", str(exc))]
    for finding in findings:
        if as_json:
            line = {"ok": finding.ok, "subject": finding.subject, "text": finding.text}
            click.echo(json.dumps(line))
        else:
            click.echo(finding.line())
    if not all(finding.ok for finding in findings):
        raise click.exceptions.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run ``iotdr``; expected failures become one line on stderr and their exit code."""
    try:
        result = root.main(args=argv, prog_name="iotdr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        # One line, like every other expected failure: what, where, what to do.
        where = exc.ctx.command_path if exc.ctx is not None else "iotdr"
        click.echo(f"iotdr: error: {exc.format_message()} (see '{where} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("iotdr: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = getattr(type(exc), "exit_code", None)
        if not isinstance(code, int):
            raise
        click.echo(f"iotdr: error: {exc}", err=True)
        return code
    # With standalone_mode off, click returns the code of ``ctx.exit(code)``.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
