"""Fleet indexing's query language over the registry's things, as SearchIndex answers it. Pure.

Theory of operation. :func:`parse_query` turns a query string into a tree of
:class:`Term`, :class:`Not`, :class:`And` and :class:`Or`, or raises
:class:`QueryError` naming what is wrong (AWS answers InvalidQueryException).
:func:`matches` decides a tree against one :class:`IndexedThing`.
:func:`search_page` sorts the matches by name and cuts one page of them, with
an opaque ``nextToken`` for the rest.

The syntax the operator tools use, as AWS documents it:

- ``field:value``: ``thingName``, ``thingId``, ``thingTypeName``,
  ``thingGroupNames`` (any of the thing's groups) and ``attributes.NAME``;
- in a value, ``*`` matches any run of characters and ``?`` one; a value in
  double quotes is taken literally (``attributes.room:"hall 2"``);
- ``AND``, ``OR`` and ``NOT`` (also ``-term``), parentheses, and terms side by
  side meaning AND; AND binds tighter than OR.

What the local control plane does not index (ranges ``[a TO b]``,
comparisons ``attributes.n>5``, shadow and connectivity fields) is refused
with a :class:`QueryError` that says so, never silently matched.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "And",
    "IndexedThing",
    "Not",
    "Or",
    "Query",
    "QueryError",
    "Term",
    "matches",
    "parse_query",
    "search_page",
]

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 500
_FIELDS = frozenset({"thingName", "thingId", "thingTypeName", "thingGroupNames"})
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|([^\s()"]+(?:"(?:[^"\\]|\\.)*")?))')


class QueryError(ValueError):
    """A query string that is not fleet indexing's syntax (or not what is indexed here)."""


@dataclass(frozen=True, slots=True)
class Term:
    """``field:value``; ``pattern`` is None when the value is literal."""

    field: str
    value: str
    pattern: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class Not:
    """The negation of ``operand``."""

    operand: Query


@dataclass(frozen=True, slots=True)
class And:
    """Every operand holds."""

    operands: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Some operand holds."""

    operands: tuple[Query, ...]


Query = Term | Not | And | Or


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexedThing:
    """What the index knows of one thing."""

    name: str
    thing_id: str = ""
    type_name: str | None = None
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)


def _tokens(text: str) -> list[str]:
    found: list[str] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise QueryError(f"unexpected {text[position:].strip()[:20]!r}")
        found.append(next(g for g in match.groups() if g is not None))
        position = match.end()
    return found


def _term(token: str) -> Term:
    name, sep, value = token.partition(":")
    if not sep:
        for op in ("<=", ">=", "<", ">"):
            if op in token:
                raise QueryError(f"range queries ({token!r}) are not indexed here")
        raise QueryError(f"{token!r} is not FIELD:VALUE")
    if name not in _FIELDS and not (name.startswith("attributes.") and len(name) > 11):
        raise QueryError(f"{name!r} is not an indexed field (thingName, thingId, "
                         "thingTypeName, thingGroupNames, attributes.NAME)")  # fmt: skip
    if value.startswith(("[", "{")):
        raise QueryError(f"range queries ({token!r}) are not indexed here")
    if not value:
        raise QueryError(f"{token!r} has no value")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise QueryError(f"unterminated quote in {token!r}")
        return Term(name, re.sub(r"\\(.)", r"\1", value[1:-1]), None)
    if "*" not in value and "?" not in value:
        return Term(name, value, None)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return Term(name, value, re.compile(f"{regex}\\Z", re.DOTALL))


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise QueryError("the query ends too early")
        self.position += 1
        return token

    def any_of(self) -> Query:
        operands = [self.all_of()]
        while self.peek() == "OR":
            self.take()
            operands.append(self.all_of())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def all_of(self) -> Query:
        operands = [self.negated()]
        while (word := self.peek()) is not None and word not in ("OR", ")"):
            if word == "AND":
                self.take()
            operands.append(self.negated())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def negated(self) -> Query:
        word = self.peek()
        if word == "NOT":
            self.take()
            return Not(self.negated())
        if word is not None and word.startswith("-") and len(word) > 1:
            self.take()
            return Not(_term(word[1:]))
        return self.primary()

    def primary(self) -> Query:
        word = self.take()
        if word == "(":
            inner = self.any_of()
            if self.peek() != ")":
                raise QueryError("a '(' is not closed")
            self.take()
            return inner
        if word == ")" or word in _KEYWORDS:
            raise QueryError(f"unexpected {word!r}")
        return _term(word)


def parse_query(text: str) -> Query:
    """The tree of a query string.

    Raises:
        QueryError: the syntax is wrong, or it asks for what is not indexed here.
    """
    if not text.strip():
        raise QueryError("the query string is empty")
    parser = _Parser(_tokens(text))
    tree = parser.any_of()
    if parser.peek() is not None:
        raise QueryError(f"unexpected {parser.peek()!r}")
    return tree


def _value_matches(term: Term, value: str) -> bool:
    if term.pattern is None:
        return value == term.value
    return term.pattern.match(value) is not None


def matches(query: Query, thing: IndexedThing) -> bool:
    """Whether ``thing`` is a result of ``query``."""
    if isinstance(query, Not):
        return not matches(query.operand, thing)
    if isinstance(query, And):
        return all(matches(q, thing) for q in query.operands)
    if isinstance(query, Or):
        return any(matches(q, thing) for q in query.operands)
    values: Iterable[str]
    if query.field == "thingName":
        values = (thing.name,)
    elif query.field == "thingId":
        values = (thing.thing_id,)
    elif query.field == "thingTypeName":
        values = (thing.type_name,) if thing.type_name else ()
    elif query.field == "thingGroupNames":
        values = thing.groups
    else:
        found = thing.attributes.get(query.field.removeprefix("attributes."))
        values = (found,) if found is not None else ()
    return any(_value_matches(query, v) for v in values)


def _fingerprint(query_string: str) -> str:
    return hashlib.sha256(query_string.encode()).hexdigest()[:12]


def _token(query_string: str, offset: int) -> str:
    raw = f"{offset}:{_fingerprint(query_string)}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _offset(query_string: str, token: str | None) -> int:
    if not token:
        return 0
    try:
        offset, fingerprint = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if fingerprint == _fingerprint(query_string) and int(offset) >= 0:
            return int(offset)
    except (ValueError, UnicodeDecodeError):
        pass
    raise QueryError("the nextToken is not one of this query's")


def search_page(
    query_string: str,
    things: Iterable[IndexedThing],
    *,
    max_results: int | None = None,
    next_token: str | None = None,
) -> tuple[list[IndexedThing], str | None]:
    """One page of the things ``query_string`` matches, by name, and the token of the next.

    Raises:
        QueryError: bad syntax, a bad ``max_results`` or a token of another query.
    """
    size = DEFAULT_PAGE_SIZE if max_results is None else max_results
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise QueryError(f"maxResults must be 1..{MAX_PAGE_SIZE}, not {size}")
    query = parse_query(query_string)
    offset = _offset(query_string, next_token)
    found = sorted((t for t in things if matches(query, t)), key=lambda t: t.name)
    page = found[offset : offset + size]
    more = offset + size < len(found)
    return page, _token(query_string, offset + size) if more else None
