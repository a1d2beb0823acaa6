"""Filters: every column type and operator against a plain-Python evaluation of the same rows,
SQL's null semantics, and malformed or hostile expressions refused with the offending token."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from cbir.errors import InvalidArgument
from cbir.filters import matching_rows, parse_filter

UTC = dt.UTC
ROWS = [
    {"key": "s3://photos/2024/a.jpg", "width": 640, "ratio": 1.5, "label": "cat",
     "last_modified": dt.datetime(2024, 1, 2, tzinfo=UTC), "public": True},
    {"key": "s3://photos/2024/b.jpg", "width": 320, "ratio": 0.75, "label": "dog",
     "last_modified": dt.datetime(2024, 6, 1, tzinfo=UTC), "public": False},
    {"key": "s3://photos/2023/c.jpg", "width": 1024, "ratio": 1.0, "label": None,
     "last_modified": dt.datetime(2023, 12, 31, 23, 59, tzinfo=UTC), "public": None},
    {"key": "s3://other/d.png", "width": None, "ratio": 2.0, "label": "bird",
     "last_modified": None, "public": True},
]
SCHEMA = pa.schema([
    ("key", pa.string()), ("width", pa.int32()), ("ratio", pa.float64()),
    ("label", pa.string()), ("last_modified", pa.timestamp("us", tz="UTC")),
    ("public", pa.bool_()),
])
TABLE = pa.Table.from_pylist(ROWS, schema=SCHEMA)


def rows(text: str) -> list[int]:
    return matching_rows(TABLE, parse_filter(text, SCHEMA)).tolist()


@pytest.mark.parametrize(("text", "expected"), [
    ("width = 640", [0]),
    ("width != 640", [1, 2]),           # null width is unknown, not "different"
    ("width <> 640", [1, 2]),
    ("width < 640", [1]),
    ("width <= 640", [0, 1]),
    ("width > 640", [2]),
    ("width >= 640", [0, 2]),
    ("640 < width", [2]),               # literal on the left
    ("ratio >= 1.0", [0, 2, 3]),
    ("ratio < 1", [1]),                 # an int literal against a float column
    ("width > -5", [0, 1, 2]),
    ("label IN ('cat', 'dog')", [0, 1]),
    ("label NOT IN ('cat')", [1, 3]),
    ("key LIKE 's3://photos/2024/%'", [0, 1]),
    ("key LIKE 's3://other/d.png'", [3]),
    ("label IS NULL", [2]),
    ("label IS NOT NULL", [0, 1, 3]),
    ("NOT (label IS NULL)", [0, 1, 3]),
    ("public = TRUE", [0, 3]),
    ("public = FALSE", [1]),
    ("last_modified >= '2024-01-01T00:00:00Z'", [0, 1]),
    ("last_modified < '2024-01-01'", [2]),          # naive means UTC
    ("last_modified > '2024-01-02T01:00:00+02:00'", [0, 1]),
    ("width >= 640 AND label = 'cat'", [0]),
    ("width < 400 OR label = 'bird'", [1, 3]),
    ("(width < 400 OR label = 'bird') AND NOT public", [1]),
    ("NOT width = 640", [1, 2]),
])
def test_operators(text: str, expected: list[int]) -> None:
    assert rows(text) == expected


def test_matches_a_python_evaluation_on_random_rows() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    widths = rng.integers(0, 4000, n)
    labels = rng.choice(["cat", "dog", "bird", "fish"], n)
    table = pa.table({"width": pa.array(widths, pa.int64()), "label": pa.array(labels)})
    schema = table.schema
    flt = parse_filter("(width >= 1000 AND width < 3000) OR label IN ('fish')", schema)
    got = matching_rows(table, flt)
    want = [i for i in range(n) if 1000 <= widths[i] < 3000 or labels[i] == "fish"]
    assert got.tolist() == want


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty"),
    ("colour = 'red'", "unknown column 'colour'"),
    ("width = 'wide'", "'width'"),
    ("label = 3", "'label'"),
    ("last_modified > 'yesterday'", "ISO-8601"),
    ("last_modified > 5", "timestamp"),
    ("key LIKE '%jpg'", "prefix"),
    ("key LIKE 's3://a_b%'", "prefix"),
    ("width LIKE '6%'", "string column"),
    ("width = ", "cannot parse"),
    ("width = 640 AND", "cannot parse"),
    ("width = width", "literal"),
    ("upper(label) = 'CAT'", "column name"),
    ("DROP TABLE images", "unsupported"),
    ("width + 1 > 3", "column name"),
    ("width", "not a condition"),
    ("label IN (SELECT 1)", "IN"),
    ("t.width = 3", "column name"),
    ("width = 640 " + "OR width = 1 " * 400, "longer than"),
])
def test_malformed_filters_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match="filter") as info:
        parse_filter(text, SCHEMA)
    assert needle in str(info.value)


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"s3://b/2024\_06/%", [0]),          # an escaped '_' is a literal underscore
    (r"s3://b/2024\_0%", [0]),
    (r"s3://b/100\%/%", [2]),             # an escaped '%' is a literal percent sign
    (r"s3://b/2024\_06/a\_b.jpg", [0]),  # no final '%': the exact key
    (r"s3://b/\2024%", [0, 1]),           # an escaped ordinary character is itself
])
def test_like_escapes_wildcards_with_a_backslash(pattern: str, expected: list[int]) -> None:
    table = pa.table({"key": ["s3://b/2024_06/a_b.jpg", "s3://b/2024-06/c.jpg",
                              "s3://b/100%/d.jpg"]})
    flt = parse_filter(f"key LIKE '{pattern}'", table.schema)
    assert matching_rows(table, flt).tolist() == expected


@pytest.mark.parametrize(("pattern", "needle"), [
    ("s3://b/2024_06/%", r"write '\_'"), ("s3://b/x\\", "lone backslash")])
def test_unescaped_underscore_or_trailing_backslash_is_refused(pattern: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match="filter") as info:
        parse_filter(f"key LIKE '{pattern}'", pa.schema([("key", pa.string())]))
    assert needle in str(info.value)


def test_unknown_column_at_evaluation_time_is_refused() -> None:
    flt = parse_filter("width > 3", SCHEMA)
    with pytest.raises(InvalidArgument, match="unknown column 'width'"):
        matching_rows(TABLE.drop_columns(["width"]), flt)
