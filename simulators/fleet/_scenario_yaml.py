"""Scenario YAML with line numbers: every error names the file, the line and the field.

:class:`YamlNode` wraps a composed YAML node with its path in the document
(``timeline[2].fault.mode``); each check it makes raises a
:class:`ScenarioError` whose one-line message says where and what:
``scenario my.yaml line 12: timeline[2].fault.mode: unknown fault mode
'melt' (known: ...)``. Pure: :func:`compose` parses text, nothing is read.
"""

from __future__ import annotations

import math

import yaml

from simulators._errors import SimulatorError

__all__ = ["ScenarioError", "YamlNode", "compose"]


class ScenarioError(SimulatorError):
    """A scenario is malformed, or names something that does not exist.

    Attributes:
        source: the file (or built-in) it came from.
        line: the 1-based line at fault, when known.
        path: the field at fault (``timeline[2].fault.mode``), when known.
        problem: what is wrong, without the place.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        where = f"scenario {source}" if source else "scenario"
        if line is not None:
            where += f" line {line}"
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        super().__init__(text)
        self.problem = message
        self.source = source
        self.line = line
        self.path = path


class YamlNode:
    """A YAML node with its path in the document: every error it raises names both."""

    def __init__(self, node: yaml.Node, path: str, source: str, loader: yaml.SafeLoader) -> None:
        self.node = node
        self.path = path
        self.source = source
        self._loader = loader

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, message: str) -> ScenarioError:
        return ScenarioError(message, source=self.source, line=self.line, path=self.path or None)

    def _child(self, node: yaml.Node, path: str) -> YamlNode:
        return YamlNode(node, path, self.source, self._loader)

    def mapping(self, what: str) -> dict[str, YamlNode]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"must be a mapping ({what})")
        out: dict[str, YamlNode] = {}
        for key_node, value_node in self.node.value:
            key = self._loader.construct_object(key_node, deep=True)
            sub = f"{self.path}.{key}" if self.path else str(key)
            if not isinstance(key, str):
                raise self._child(key_node, sub).error("keys must be strings")
            if key in out:
                raise self._child(key_node, sub).error("given twice")
            out[key] = self._child(value_node, sub)
        return out

    def keys(
        self, what: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, YamlNode]:
        items = self.mapping(what)
        allowed = (*required, *optional)
        for key, child in items.items():
            if key not in allowed:
                raise child.error(f"unknown key (allowed: {', '.join(allowed)})")
        missing = [key for key in required if key not in items]
        if missing:
            raise self.error(f"missing {', '.join(missing)} ({what})")
        return items

    def sequence(self, what: str) -> list[YamlNode]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"must be a list ({what})")
        return [self._child(item, f"{self.path}[{i}]") for i, item in enumerate(self.node.value)]

    def value(self) -> object:
        return self._loader.construct_object(self.node, deep=True)

    def string(self) -> str:
        value = self.value()
        if not isinstance(value, str) or not value:
            raise self.error(f"must be a non-empty string, not {value!r}")
        return value

    def number(self, *, positive: bool = False) -> float:
        value = self.value()
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.error(f"must be a number, not {value!r}")
        if value < 0 or (positive and value == 0):
            raise self.error(f"must be {'more than zero' if positive else 'zero or more'}")
        return float(value)

    def integer(self) -> int:
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be a whole number, not {value!r}")
        if value < 1:
            raise self.error(f"must be at least 1, not {value}")
        return value

    def choice(self, choices: tuple[str, ...], what: str) -> str:
        value = self.value()
        # YAML 1.1 reads a bare ``off`` (or ``no``) as false: a choice means the word written.
        if isinstance(value, bool) and isinstance(self.node, yaml.ScalarNode):
            value = self.node.value
        if not isinstance(value, str) or value not in choices:
            raise self.error(f"unknown {what} {value!r} (known: {', '.join(choices)})")
        return value


def compose(text: str, source: str) -> tuple[yaml.Node, yaml.SafeLoader]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid"
        msg = f"not valid YAML: {problem}; check the indentation and brackets"
        raise ScenarioError(msg, source=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML: {exc}", source=source) from None
    if node is None:
        msg = "empty; a scenario needs name, devices, duration_s, regions and timeline"
        raise ScenarioError(msg, source=source, line=1)
    return node, loader
