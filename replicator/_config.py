"""The replicator commands' configuration file (TOML), as click's ``default_map``.

Keys are the commands' long option names, with underscores or dashes
(``primary_region = "us-east-1"``, ``thing-recheck = 10``); API quotas are a
table (``[quota]`` with ``CreateThing = 5``). A relative path is relative to
the file. The values become click's ``default_map``, so that the command line
wins over the environment, the environment over the file, and the file over
the defaults; click checks them like command-line values.

One file serves every ``iotdr replicator`` command that takes ``--config``
(``run`` and ``reconcile``): a key that is an option of another of them
(``feed`` for ``reconcile``, ``dry_run`` for ``run``) is ignored by the command
that does not have it, unchecked (the command that has it checks it).

A bad file (missing, not TOML, a key no such command knows, a value of the
wrong type or out of range) is a :class:`~replicator._errors.ConfigError`
naming the file and the key: one line, exit 2.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from replicator._errors import ConfigError

__all__ = ["QUOTA_KEY", "load_default_map"]

QUOTA_KEY = "quota"
"""The table of API = TPS overrides (``--quota API=TPS``)."""


def load_default_map(path: Path, ctx: click.Context) -> dict[str, Any]:
    """Read ``path`` and return ``ctx.command``'s ``default_map`` from it.

    Args:
        path: the TOML file.
        ctx: the context of the command being invoked (its options say which
            keys exist and what they hold; its group's other commands, which
            keys to ignore).

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds a key no
            command knows or a bad value.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not TOML: {exc}") from None
    options = _options_by_key(ctx.command)
    theirs = {k for other in _siblings(ctx) for k in _options_by_key(other)}
    found: dict[str, Any] = {}
    for key, raw in document.items():
        name = key.replace("-", "_")
        option = options.get(name)
        if option is None and name in theirs:
            continue  # another command's option: that command checks it
        if option is None or option.name is None:
            known = ", ".join(sorted(options.keys() | theirs))
            raise ConfigError(f"config {path}: unknown key {key!r} (known: {known})")
        if name == QUOTA_KEY:
            value: object = _quota_table(path, key, raw)
        else:
            _check_type(path, key, option, raw)
            value = _relative_to(path, option, raw)
        try:
            option.process_value(ctx, value)  # click's own conversion and checks
        except click.BadParameter as exc:
            raise ConfigError(f"config {path}: key {key!r}: {exc.format_message()}") from None
        found[option.name] = value
    return found


def _siblings(ctx: click.Context) -> list[click.Command]:
    """The other commands of ``ctx.command``'s group that read a ``--config`` file too."""
    parent = ctx.parent
    if parent is not None and isinstance(parent.command, click.Group):
        group = parent.command
    else:  # invoked on its own (tests, embedding): its group is still ``iotdr replicator``
        from replicator.cli import replicator  # noqa: PLC0415 - cli imports this module lazily

        group = replicator
    if not any(command is ctx.command for command in group.commands.values()):
        return []
    return [
        command
        for command in group.commands.values()
        if command is not ctx.command and any(p.name == "config" for p in command.params)
    ]


def _options_by_key(command: click.Command | None) -> dict[str, click.Option]:
    """The command's options by long name with underscores, less --config and --help."""
    found: dict[str, click.Option] = {}
    for param in command.params if command is not None else ():
        if not isinstance(param, click.Option) or param.name in ("config", "help"):
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if longs and param.expose_value:
            found[longs[0][2:].replace("-", "_")] = param
    return found


def _quota_table(path: Path, key: str, value: object) -> list[str]:
    if not isinstance(value, dict):
        raise ConfigError(f"config {path}: key {key!r}: expected a table of API = TPS")
    return [f"{api}={_tps(path, key, api, tps)}" for api, tps in value.items()]


def _tps(path: Path, key: str, api: str, tps: object) -> float:
    if isinstance(tps, bool) or not isinstance(tps, int | float) or tps <= 0:
        raise ConfigError(f"config {path}: key '{key}.{api}': expected a positive number of TPS")
    return float(tps)


def _check_type(path: Path, key: str, option: click.Option, value: object) -> None:
    """TOML's types must match the option's: no ``workers = "8"``, no ``dry_run = "yes"``."""
    if option.multiple:
        if not isinstance(value, list):
            raise ConfigError(f"config {path}: key {key!r}: expected a list")
        for item in value:
            _check_scalar(path, key, option, item)
    else:
        _check_scalar(path, key, option, value)


def _check_scalar(path: Path, key: str, option: click.Option, value: object) -> None:
    wanted: tuple[type, ...]
    if option.is_flag:
        wanted, name = (bool,), "true or false"
    elif isinstance(option.type, click.types.IntParamType):
        wanted, name = (int,), "an integer"
    elif isinstance(option.type, click.types.FloatParamType):
        wanted, name = (int, float), "a number"
    else:
        wanted, name = (str,), "a string"
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        got = type(value).__name__
        raise ConfigError(f"config {path}: key {key!r}: expected {name}, not {got}")


def _relative_to(path: Path, option: click.Option, value: object) -> object:
    """A relative path in the file is relative to the file, not to the working directory."""
    if isinstance(option.type, click.Path) and isinstance(value, str) and value != ":memory:":
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            return str(path.parent / candidate)
    return value
