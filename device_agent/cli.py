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
from typing import Any, ClassVar

import click

__all__ = ["agent", "configure_logging", "emit", "main", "root"]

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


def main(argv: list[str] | None = None) -> int:
    """Run ``iotdr``; expected failures become one line on stderr and their exit code."""
    try:
        result = root.main(args=argv, prog_name="iotdr", standalone_mode=False)
    except click.exceptions.Exit as exc:
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
