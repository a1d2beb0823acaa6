"""``cbir query --batch FILE``: many queries from a file, sent with ``SearchBatch``.

FILE is either a ``.npy`` float32 matrix (one query vector per row) or JSON Lines, one query
per line: ``{"vector": [...]}``, ``{"image_id": N}`` (a number or a decimal string) or
``{"image": "path"}`` (relative paths are read from FILE's folder). Blank lines are skipped.
Queries are sent in requests of at most ``CHUNK`` queries (a request's image queries are
bounded by ``Limits.max_batch_images``), answers printed in file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cbir.client_batch import BatchQuery
from cbir.errors import InvalidArgument
from cbir.limits import DEFAULT_LIMITS

# Queries per request: within both bounds (queries, images) whatever the file's mix.
CHUNK = min(DEFAULT_LIMITS.max_batch, DEFAULT_LIMITS.max_batch_images)
KINDS = ("vector", "image_id", "image")


def read_batch(path: str) -> list[BatchQuery]:
    """The file's queries; a malformed file raises InvalidArgument naming the line."""
    file = Path(path)
    if not file.is_file():
        raise InvalidArgument(f"batch file {path} does not exist or is not a file")
    queries = _read_npy(file) if file.suffix == ".npy" else _read_jsonl(file)
    if not queries:
        raise InvalidArgument(f"batch file {path} holds no queries")
    return queries


def _read_npy(file: Path) -> list[BatchQuery]:
    try:
        matrix = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"batch file {file} is not a .npy array: {exc}") from exc
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise InvalidArgument(f"batch file {file} must hold a 2-D float matrix (one query "
                              f"vector per row), got {matrix.dtype} of shape {matrix.shape}")
    return [BatchQuery(vector=row) for row in np.asarray(matrix, np.float32)]


def _read_jsonl(file: Path) -> list[BatchQuery]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read batch file {file}: {exc}") from exc
    return [_query(line, number, file) for number, line in _lines(text)]


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line


def _query(line: str, number: int, file: Path) -> BatchQuery:
    where = f"{file} line {number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in KINDS:
        raise InvalidArgument(f"{where}: expected one of {{\"vector\": [...]}}, "
                              "{\"image_id\": N}, {\"image\": \"path\"}")
    kind, value = next(iter(obj.items()))
    if kind == "vector":
        return BatchQuery(vector=_vector(value, where))
    if kind == "image_id":
        return BatchQuery(image_id=_image_id(value, where))
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{where}: \"image\" must be a file path")
    return BatchQuery(image=file.parent / value)


def _vector(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise InvalidArgument(f"{where}: \"vector\" must be a non-empty list of numbers")
    return np.asarray(value, dtype=np.float32)


def _image_id(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidArgument(f"{where}: \"image_id\" must be a non-negative integer")


def chunks(queries: list[BatchQuery]) -> Iterator[list[BatchQuery]]:
    for start in range(0, len(queries), CHUNK):
        yield queries[start:start + CHUNK]
