"""The delta's metadata (``cbir.live_metadata``, ``shard_server.delta``) and the live filtered
search (``shard_server.filtering.live_filtered_search``): upserted rows typed like the base's
metadata table, filters over base + delta exact against brute force over the expected live
rows, and the delta's fast paths equal to the general ones."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import faiss as _faiss
import numpy as np
import pyarrow as pa
import pytest

from cbir.filters import parse_filter
from cbir.limits import DEFAULT_LIMITS
from cbir.live_metadata import arrow_type, cast_attribute, check_attributes, metadata_batch
from cbir.wal import Delete, LogEntry, ObjectInfo, Operation, Upsert
from shard_server.filtering import FilterConfig, live_filtered_search, make_plan
from shard_server.index_store import LoadedIndex
from shard_server.segments import LiveView, merge_top_k

faiss: Any = _faiss
DIM = 16
UTC = dt.UTC
SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("key", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("size", pa.int64()),
    ("last_modified", pa.timestamp("ms", tz="UTC")), ("content_type", pa.string()),
    ("label", pa.string()), ("rating", pa.int32()), ("flag", pa.bool_()),
    ("attr_width", pa.string()),
])


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_an_upsert_row_gets_every_column_typed_like_the_base() -> None:
    info = ObjectInfo(size=999, width=640, height=480, content_type="image/jpeg",
                      last_modified=dt.datetime(2024, 6, 1, tzinfo=UTC))
    rows = [Upsert(1, "s3://b/a.jpg", np.ones(DIM, np.float32),
                   {"label": "cat", "rating": "4", "flag": "true", "width": "huge"}, info),
            Upsert(2, "s3://b/v", np.ones(DIM, np.float32), {"rating": "four", "extra": "x"})]
    batch = metadata_batch(rows, SCHEMA)
    assert batch.schema == SCHEMA
    got = batch.to_pylist()
    assert got[0] == {"image_id": 1, "key": "s3://b/a.jpg", "width": 640, "height": 480,
                      "size": 999, "last_modified": dt.datetime(2024, 6, 1, tzinfo=UTC),
                      "content_type": "image/jpeg", "label": "cat", "rating": 4, "flag": True,
                      "attr_width": "huge"}
    # Unknown object metadata, an attribute that does not fit its column: null.
    assert got[1]["width"] is None and got[1]["rating"] is None and got[1]["label"] is None


def test_attribute_casts_and_the_coordinators_check() -> None:
    assert cast_attribute(" 12 ", pa.int32()) == 12
    assert cast_attribute("0", pa.bool_()) is False
    assert cast_attribute("2.5", pa.float64()) == 2.5
    assert cast_attribute("2024-06-01", pa.timestamp("ms", tz="UTC")) == dt.datetime(
        2024, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="is not a int32"):
        cast_attribute(str(2**40), pa.int32())
    with pytest.raises(ValueError, match="is not a bool"):
        cast_attribute("maybe", pa.bool_())
    columns = {f.name: str(f.type) for f in SCHEMA}
    assert arrow_type(columns["last_modified"]) == pa.timestamp("ms", tz="UTC")
    assert check_attributes({"label": "x", "rating": "3", "unknown": "y", "width": "w"},
                            columns) == ""
    reason = check_attributes({"rating": "three"}, columns)
    assert reason.startswith("attribute 'rating' (column 'rating'): 'three' is not a int32")


def _loaded(ids: np.ndarray, vectors: np.ndarray, table: pa.Table) -> LoadedIndex:
    index = faiss.index_factory(DIM, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(vectors, ids)
    manifest: Any = SimpleNamespace(dim=DIM, wal_seq=0, index_version="v1", search_params={})
    return LoadedIndex(index, manifest, "mem://", ids, table.column("key").combine_chunks(),
                       0, table)


class World:
    """A base of 400 rows with metadata, then live writes; ``live`` is what must be served."""

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.rng = rng
        ids = np.sort(rng.choice(10**12, 400, replace=False)).astype(np.int64)
        vectors = _unit(rng, 400)
        labels = [["cat", "dog", None][i] for i in rng.integers(0, 3, 400)]
        widths = rng.integers(100, 1000, 400)
        table = pa.table({"image_id": ids, "key": [f"s3://b/{i}" for i in ids],
                          "width": pa.array(widths, pa.int32()), "label": labels})
        self.loaded = _loaded(ids, vectors, table)
        self.view = self.loaded.live.get()
        self.live: dict[int, tuple[np.ndarray, dict[str, Any]]] = {
            int(i): (v, {"width": int(w), "label": lab})
            for i, v, w, lab in zip(ids, vectors, widths, labels, strict=True)}
        self.base_ids = ids

    def upsert(self, image_id: int, label: str | None, width: int | None) -> Upsert:
        vector = _unit(self.rng, 1)[0]
        self.live[image_id] = (vector, {"width": width, "label": label})
        return Upsert(image_id, f"s3://b/{image_id}", vector,
                      {"label": label} if label else {}, ObjectInfo(width=width))

    def delete(self, image_id: int) -> Delete:
        self.live.pop(image_id, None)
        return Delete(image_id)

    def apply(self, ops: list[Operation]) -> None:
        self.view = self.view.apply(LogEntry(self.view.applied_seq + 1, 0, tuple(ops), "v", 0))

    def brute_force(self, passes: Any, query: np.ndarray, k: int) -> list[int]:
        ids = np.array(sorted(i for i, (_, m) in self.live.items() if passes(m)), np.int64)
        if not len(ids):
            return []
        scores = np.stack([self.live[int(i)][0] for i in ids]) @ query
        return ids[np.lexsort((ids, -scores))][:k].tolist()


FILTERS = [
    ("label = 'cat'", lambda m: m["label"] == "cat"),
    ("width >= 500", lambda m: m["width"] is not None and m["width"] >= 500),
    ("label IN ('cat', 'dog') AND width < 300",
     lambda m: m["label"] in ("cat", "dog") and m["width"] is not None and m["width"] < 300),
    ("label IS NULL", lambda m: m["label"] is None),
]


@pytest.mark.parametrize("exact_rows", [100_000, 0], ids=["brute-force-plan", "selector-plan"])
def test_filtered_search_covers_the_delta_exactly(exact_rows: int) -> None:
    world = World()
    base = world.base_ids.tolist()
    # Replace some base rows (new label/width/vector), delete some, add new rows; in several
    # entries, one replacing a row the delta itself holds.
    world.apply([world.upsert(i, "cat", 900) for i in base[:30]]
                + [world.delete(i) for i in base[30:60]]
                + [world.upsert(10**13 + j, ["cat", "dog", None][j % 3], 100 + 17 * j)
                   for j in range(50)])
    world.apply([world.upsert(10**13 + 1, "dog", 250), world.delete(10**13 + 2),
                 world.upsert(base[0], None, None)])
    config = FilterConfig(exact_rows=exact_rows, exact_fraction=0.0)
    queries = _unit(world.rng, 6)
    for text, passes in FILTERS:
        flt = parse_filter(text, world.loaded.metadata.schema)  # type: ignore[union-attr]
        plan = make_plan(world.loaded, flt, config)
        assert (plan.vectors is not None) == bool(exact_rows)
        for query in queries:
            _, ids = live_filtered_search(world.loaded, plan, world.view, query[None, :], 10,
                                          {}, config, DEFAULT_LIMITS)
            got = [int(i) for i in ids[0] if i >= 0]
            assert got == world.brute_force(passes, query, 10), text
        _, many = live_filtered_search(world.loaded, plan, world.view, queries, 10, {},
                                       config, DEFAULT_LIMITS)
        assert [[int(i) for i in row if i >= 0] for row in many] == [
            world.brute_force(passes, q, 10) for q in queries], text


def test_delta_masks_grow_with_the_views() -> None:
    world = World()
    flt = parse_filter("label = 'dog'", world.loaded.metadata.schema)  # type: ignore[union-attr]
    views = []
    for round_ in range(4):
        world.apply([world.upsert(10**13 + 10 * round_ + j, ["dog", "cat"][j % 2], 1)
                     for j in range(5)])
        views.append(world.view)
        store = world.view.delta.store
        expected = [True, False, True, False, True] * (round_ + 1)
        assert store.matching(flt, world.view.delta.size).tolist() == expected
    # An older view still gets the mask of its own rows.
    assert len(views[0].delta.store.matching(flt, views[0].delta.size)) == 5


def test_delta_fast_paths_equal_the_general_ones() -> None:
    rng = np.random.default_rng(5)
    view = LiveView.of_base(np.zeros(0, np.int64), DIM)
    vectors = _unit(rng, 500)
    view = view.apply(LogEntry(1, 0, tuple(Upsert(i, f"k{i}", vectors[i]) for i in range(500)),
                               "v", 0))
    view = view.apply(LogEntry(2, 0, tuple(Delete(i) for i in range(0, 500, 3)), "v", 0))
    for query in _unit(rng, 20):
        full_scores, full_ids = view.search_delta(query[None, :], 10)
        for floor in (-np.inf, float(full_scores[0, 9]), float(full_scores[0, 3])):
            scores, ids = view.delta_candidates(query[None, :], 10, floor=np.array([floor]))
            merged = merge_top_k(scores, ids, scores[:, :0], ids[:, :0], 10)[1]
            kept = [int(i) for i in full_ids[0] if full_scores[0, list(full_ids[0]).index(i)]
                    >= floor]
            assert [int(i) for i in merged[0] if i >= 0] == kept
            assert not set(ids[0].tolist()) & set(range(0, 500, 3))


def test_the_small_merge_equals_the_numpy_merge() -> None:
    rng = np.random.default_rng(6)
    for _ in range(50):
        a = np.round(rng.random((1, 10)), 1).astype(np.float32)  # ties on purpose
        b = np.round(rng.random((1, 7)), 1).astype(np.float32)
        ids_a, ids_b = rng.integers(0, 30, (1, 10)), rng.integers(0, 30, (1, 7))
        ids_a[0, -2:] = -1
        a[0, -2:] = -np.inf
        small = merge_top_k(a, ids_a, b, ids_b, 12)
        wide = merge_top_k(np.repeat(a, 2, 0), np.repeat(ids_a, 2, 0), np.repeat(b, 2, 0),
                           np.repeat(ids_b, 2, 0), 12)
        np.testing.assert_array_equal(small[1][0], wide[1][0])
        np.testing.assert_array_equal(small[0][0], wide[0][0])
