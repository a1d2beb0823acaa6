"""The sequential engine's partition step: one pass over the inputs spills every key's payloads
to its own local file, then each key is reduced from its file alone.

So a sequential build reads its inputs once whatever the number of keys, and holds at most one
input's payloads plus one key's reducer in memory (the reducer streams its file). Payloads are
pickled frames appended to the key's file; the temp directory goes when the run ends.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, TypeVar

from jobs.engine_types import Finished, Progress

T = TypeVar("T")
S = TypeVar("S")
P = TypeVar("P")
R = TypeVar("R")


def frames(path: Path) -> Iterator[Any]:
    """The payloads spilled to ``path``, in the order they were written."""
    if not path.exists():
        return
    with path.open("rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _spill(inputs: Sequence[T], route_fn: Callable[[T, S], Iterable[tuple[int, P]]],
           wanted: set[int], shared: S, root: Path) -> None:
    with ExitStack() as stack:
        files: dict[int, IO[bytes]] = {}
        for item in inputs:
            for key, payload in route_fn(item, shared):
                if key not in wanted:
                    continue
                if key not in files:
                    files[key] = stack.enter_context((root / f"{key}.spill").open("wb"))
                pickle.dump(payload, files[key], protocol=pickle.HIGHEST_PROTOCOL)


def run_partitioned(
    inputs: Sequence[T], route_fn: Callable[[T, S], Iterable[tuple[int, P]]],
    reduce_fn: Callable[[int, Iterable[P], S], R], keys: Sequence[int], shared: S,
    progress: Progress,
) -> list[Finished[R]]:
    results: list[Finished[R]] = []
    with tempfile.TemporaryDirectory(prefix="cbir-spill-") as tmp:
        root = Path(tmp)
        _spill(inputs, route_fn, set(keys), shared, root)
        for done, key in enumerate(keys, start=1):
            results.append(Finished(reduce_fn(key, frames(root / f"{key}.spill"), shared)))
            (root / f"{key}.spill").unlink(missing_ok=True)  # free the disk as we go
            progress(done)
    return results
