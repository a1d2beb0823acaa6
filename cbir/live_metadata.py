"""The metadata row of an upserted image, typed like the served index's metadata table.

An upsert's row gets the columns a backfilled row has (docs/filters.md): ``image_id`` and
``key``; ``size``, ``width``, ``height``, ``content_type``, ``last_modified`` from what the
coordinator learnt of the object (``cbir.wal.ObjectInfo``); every other column from the upsert's
string attributes. The rules (docs/live_updates.md, "Metadata of upserts"):

- attribute ``NAME`` fills the column ``NAME``; a ``NAME`` that is one of the computed columns
  above fills ``attr_NAME`` instead, exactly as the backfill names an S3 user metadata entry
  that clashes with a built-in column;
- the string is cast to the column's type (int, float, bool ``true``/``false``/``1``/``0``,
  ISO-8601 timestamp, string). The coordinator refuses an item whose attribute cannot be cast
  (``check_attributes``, with the columns the shards report); a replica whose schema differs
  (another version) stores null for such a value rather than fail the log entry;
- a column nothing fills is null; an attribute that names no column is kept in the log but not
  served (a later version that has the column serves it).

Shared by the coordinator (validation) and the shard server (the rows), so both apply one rule.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Container, Mapping, Sequence

import pyarrow as pa

from cbir.wal import INFO_COLUMNS, Upsert

COMPUTED = ("image_id", "key", *INFO_COLUMNS)
ATTR_PREFIX = "attr_"
_TIMESTAMP = re.compile(r"timestamp\[(s|ms|us|ns)(?:, tz=([^\]]+))?\]")
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


def column_of(name: str, columns: Container[str]) -> str | None:
    """The column attribute ``name`` fills, or None when the schema has none for it."""
    column = f"{ATTR_PREFIX}{name}" if name in COMPUTED else name
    return column if column in columns else None


def source_of(column: str) -> str:
    """The attribute name that fills ``column`` (the inverse of ``column_of``)."""
    if column.startswith(ATTR_PREFIX) and column[len(ATTR_PREFIX):] in COMPUTED:
        return column[len(ATTR_PREFIX):]
    return column


def arrow_type(text: str) -> pa.DataType | None:
    """An Arrow type from its ``str()`` (what ``Stats.metadata_columns`` carries), or None."""
    found = _TIMESTAMP.fullmatch(text)
    if found:
        return pa.timestamp(found.group(1), tz=found.group(2))
    try:
        return pa.type_for_alias(text)
    except ValueError:
        return None


def cast_attribute(value: str, kind: pa.DataType) -> object:
    """``value`` as a Python value of Arrow type ``kind``; ValueError says why it is not one."""
    text = value.strip()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return value
    try:
        if pa.types.is_boolean(kind):
            out: object = _boolean(text)
        elif pa.types.is_integer(kind):
            out = int(text)
        elif pa.types.is_floating(kind):
            out = float(text)
        elif pa.types.is_timestamp(kind):
            out = _timestamp(text, kind)
        else:
            raise ValueError(f"a {kind} column cannot be set from an attribute")
        pa.array([out], type=kind)  # range check (an int32 column and 2**40)
    except (ValueError, OverflowError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{value[:80]!r} is not a {kind} ({exc})") from None
    return out


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


def _timestamp(text: str, kind: pa.TimestampType) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    if kind.tz is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)  # a naive value means UTC, as filters read it
    if kind.tz is None and moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def check_attributes(attributes: Mapping[str, str], columns: Mapping[str, str]) -> str:
    """For the coordinator: "" when every attribute fits the column it fills (``columns``:
    name -> Arrow type string, as the shards report them), else the reason."""
    for name, value in sorted(attributes.items()):
        column = column_of(name, columns)
        kind = arrow_type(columns[column]) if column is not None else None
        if kind is None:
            continue  # no such column (kept in the log), or a type only the replica knows
        try:
            cast_attribute(value, kind)
        except ValueError as exc:
            return f"attribute {name!r} (column {column!r}): {exc}"
    return ""


def metadata_batch(upserts: Sequence[Upsert], schema: pa.Schema) -> pa.RecordBatch:
    """The metadata rows of ``upserts`` (in order) with exactly ``schema``'s columns and types;
    a value that does not fit its column is null (see the module docstring)."""
    arrays = [_column(upserts, schema.field(i)) for i in range(len(schema))]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _column(upserts: Sequence[Upsert], field: pa.Field) -> pa.Array:
    name = field.name
    if name == "image_id":
        values: list[object] = [u.image_id for u in upserts]
    elif name == "key":
        values = [u.key for u in upserts]
    elif name in INFO_COLUMNS:
        values = [getattr(u.info, name) for u in upserts]
    else:
        source = source_of(name)
        values = [cast_or_none(u.attributes.get(source), field.type) for u in upserts]
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([fits_or_none(v, field.type) for v in values], type=field.type)


def cast_or_none(value: str | None, kind: pa.DataType) -> object:
    """An attribute cast to ``kind``, or None where it does not cast (a replica never refuses
    a durable entry; the coordinator has refused what it could check)."""
    if value is None:
        return None
    try:
        return cast_attribute(value, kind)
    except ValueError:
        return None


def fits_or_none(value: object, kind: pa.DataType) -> object:
    """``value`` if Arrow takes it as ``kind`` (e.g. an int in range), else None."""
    try:
        pa.array([value], type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return value
