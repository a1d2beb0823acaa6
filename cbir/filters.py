"""Search filters: one textual form for the CLI, the client, the HTTP API and the shards.

A filter is a SQL-like boolean expression over an image's metadata columns, e.g.
``key LIKE 's3://photos/2024/%' AND width >= 640 AND label IN ('cat', 'dog')``. It is parsed by
sqlglot (a well-kept SQL parser: no hand-written tokenizer), checked against the Arrow schema of
the columns it will run on (unknown columns and type mismatches name the offending column or
token), and compiled to a pyarrow compute expression that a shard evaluates over its metadata
table. Supported: ``= != <> < <= > >=``, ``IN (...)``, ``LIKE 'prefix%'``, ``IS [NOT] NULL``,
``AND``, ``OR``, ``NOT``, parentheses; timestamps compare with ISO-8601 strings. SQL's
three-valued logic holds: a comparison with a null value is unknown, and unknown rows do not pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import expressions as exp

from cbir.errors import InvalidArgument

MAX_FILTER_CHARS = 4096
MAX_IN_VALUES = 1024
_ROW = "__cbir_row__"

_COMPARISONS: dict[type[exp.Expression], Callable[[pc.Expression, object], pc.Expression]] = {
    exp.EQ: lambda f, v: f == v,
    exp.NEQ: lambda f, v: f != v,
    exp.LT: lambda f, v: f < v,
    exp.LTE: lambda f, v: f <= v,
    exp.GT: lambda f, v: f > v,
    exp.GTE: lambda f, v: f >= v,
}
# `3 < width` is `width > 3`.
_MIRRORED: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.EQ: exp.EQ, exp.NEQ: exp.NEQ, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.GT: exp.LT,
    exp.GTE: exp.LTE,
}


@dataclass(frozen=True)
class Filter:
    """A validated filter: its text (the cache key part) and the compiled Arrow expression."""

    text: str
    expression: pc.Expression
    columns: frozenset[str]


def parse_filter(text: str, schema: pa.Schema) -> Filter:
    """Parse and validate ``text`` against ``schema``; raises InvalidArgument with the reason."""
    text = text.strip()
    if not text:
        raise InvalidArgument("filter: empty expression")
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(f"filter: longer than {MAX_FILTER_CHARS} characters")
    try:
        tree: exp.Expression = sqlglot.parse_one(text)  # type: ignore[assignment]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as exc:
        raise InvalidArgument(f"filter: cannot parse {text[:80]!r}: {_first_line(exc)}") from None
    compiler = _Compiler(schema)
    return Filter(text=text, expression=compiler.boolean(tree),
                  columns=frozenset(compiler.columns))


def matching_rows(table: pa.Table, flt: Filter) -> np.ndarray:
    """Positions (int64, ascending) of the rows of ``table`` that pass ``flt``."""
    missing = flt.columns - set(table.column_names)
    if missing:
        raise InvalidArgument(f"filter: unknown column {sorted(missing)[0]!r}")
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    kept = table.select(sorted(flt.columns)).append_column(_ROW, rows).filter(flt.expression)
    return np.asarray(kept.column(_ROW).to_numpy(), dtype=np.int64)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Compiler:
    """sqlglot tree -> pyarrow compute expression, checking columns and literal types."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.columns: set[str] = set()

    def boolean(self, node: exp.Expression) -> pc.Expression:
        if isinstance(node, exp.Paren):
            return self.boolean(node.this)
        if isinstance(node, exp.And):
            return self.boolean(node.this) & self.boolean(node.expression)
        if isinstance(node, exp.Or):
            return self.boolean(node.this) | self.boolean(node.expression)
        if isinstance(node, exp.Not):
            return ~self.boolean(node.this)
        if isinstance(node, exp.Column):
            return self._flag(node)
        if type(node) in _COMPARISONS:
            return self._comparison(node)
        if isinstance(node, exp.In):
            return self._membership(node)
        if isinstance(node, exp.Like):
            return self._prefix(node)
        if isinstance(node, exp.Is):
            return self._is_null(node)
        raise InvalidArgument(f"filter: unsupported expression {_snippet(node)!r}")

    def _flag(self, node: exp.Column) -> pc.Expression:
        name, field = self._column(node, node)
        if not pa.types.is_boolean(field.type):
            raise InvalidArgument(f"filter: column {name!r} ({field.type}) is not a condition")
        return pc.field(name)

    def _comparison(self, node: exp.Expression) -> pc.Expression:
        left, right, kind = node.this, node.expression, type(node)
        if not isinstance(left, exp.Column) and isinstance(right, exp.Column):
            left, right, kind = right, left, _MIRRORED[kind]
        name, field = self._column(left, node)
        return _COMPARISONS[kind](pc.field(name), self._literal(right, field))

    def _membership(self, node: exp.In) -> pc.Expression:
        name, field = self._column(node.this, node)
        values = node.expressions
        if not values or node.args.get("query") is not None:
            raise InvalidArgument(f"filter: IN needs a list of literals near {_snippet(node)!r}")
        if len(values) > MAX_IN_VALUES:
            raise InvalidArgument(f"filter: IN takes at most {MAX_IN_VALUES} values")
        literal = [self._literal(v, field) for v in values]
        found = pc.field(name).isin(pa.array(literal, type=field.type))
        # isin() says false for a null value; SQL says unknown, so NOT IN must not pass it.
        return pc.if_else(pc.field(name).is_valid(), found, pa.scalar(None, pa.bool_()))

    def _prefix(self, node: exp.Like) -> pc.Expression:
        name, field = self._column(node.this, node)
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise InvalidArgument(f"filter: LIKE needs a string column, {name!r} is {field.type}")
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise InvalidArgument(f"filter: LIKE needs a string pattern near {_snippet(node)!r}")
        text = str(pattern.this)
        prefix, is_prefix = _like_prefix(text)
        if not is_prefix:
            return pc.field(name) == prefix
        return pc.starts_with(pc.field(name), pattern=prefix)

    def _is_null(self, node: exp.Is) -> pc.Expression:
        if not isinstance(node.expression, exp.Null):
            raise InvalidArgument(f"filter: only IS [NOT] NULL is supported: {_snippet(node)!r}")
        name, _ = self._column(node.this, node)
        return pc.field(name).is_null()

    def _column(self, node: exp.Expression, context: exp.Expression) -> tuple[str, pa.Field]:
        if not isinstance(node, exp.Column) or node.table:
            raise InvalidArgument(f"filter: expected a column name in {_snippet(context)!r}")
        name = node.name
        index = self.schema.get_field_index(name)
        if index < 0:
            known = ", ".join(self.schema.names)
            raise InvalidArgument(f"filter: unknown column {name!r} (columns: {known})")
        self.columns.add(name)
        return name, self.schema.field(index)

    def _literal(self, node: exp.Expression, field: pa.Field) -> object:
        return _coerce(_python_value(node), field)


def _python_value(node: exp.Expression) -> object:
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        value = _python_value(node.this)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        text = str(node.this)
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise InvalidArgument(f"filter: expected a literal value, got {_snippet(node)!r}")


def _coerce(value: object, field: pa.Field) -> object:
    """The literal as the column's type, or a clear error naming the column."""
    kind = field.type
    if pa.types.is_timestamp(kind):
        return _timestamp(value, field)
    if pa.types.is_boolean(kind):
        if isinstance(value, bool):
            return value
    elif pa.types.is_integer(kind):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif pa.types.is_floating(kind):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if isinstance(value, str):
            return value
    else:
        raise InvalidArgument(f"filter: column {field.name!r} ({kind}) cannot be filtered on")
    raise InvalidArgument(f"filter: column {field.name!r} is {kind}, not comparable to {value!r}")


def _timestamp(value: object, field: pa.Field) -> pa.Scalar:
    if not isinstance(value, str):
        raise InvalidArgument(
            f"filter: column {field.name!r} is a timestamp: compare it with an ISO-8601 string"
        )
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"filter: {value!r} is not an ISO-8601 timestamp") from None
    kind = field.type
    if kind.tz is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # a naive literal means UTC, as stored
    elif kind.tz is None and moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return pa.scalar(moment, type=kind)


def _snippet(node: exp.Expression) -> str:
    return node.sql()[:80]


def _like_prefix(text: str) -> tuple[str, bool]:
    """(the literal text, whether a final '%' made it a prefix) of a LIKE pattern.

    '_' and '%' are SQL wildcards; a backslash makes the next character literal (PostgreSQL's and
    MySQL's default escape), so keys with underscores can be matched: 's3://b/2024\\_06/%'.
    """
    chars: list[str] = []
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%" and i == len(text) - 1:
            return "".join(chars), True
        elif char in "%_":
            raise InvalidArgument(
                f"filter: LIKE supports prefix patterns only ('abc%'), not {text!r}"
                + (r" (write '\_' for a literal underscore)" if char == "_" else "")
            )
        else:
            chars.append(char)
    if escaped:
        raise InvalidArgument(f"filter: LIKE pattern {text!r} ends with a lone backslash")
    return "".join(chars), False
