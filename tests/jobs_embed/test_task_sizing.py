"""Tasks are sized from the work and the engine's cores: a small bucket on a cluster is
several tasks (every executor works), a large one is tasks of at most 256 objects."""

from __future__ import annotations

import pytest

from jobs.embed.config import ObjectRef
from jobs.embed.plan import TASKS_PER_CORE, make_tasks, objects_per_task


@pytest.mark.parametrize(("todo", "cores", "per_task"), [
    (40, 2, 7),  # 6 tasks for 2 cores, not one task of 40
    (8, 2, 2),
    (5, 4, 1),
    (1_000_000, 8, 256),  # capped: one task = one Parquet part of <= 256 images
    (100, 1, 256),  # sequential: one process, no reason to split
])
def test_objects_per_task(todo: int, cores: int, per_task: int) -> None:
    assert objects_per_task(todo, cores) == per_task


def test_a_small_bucket_gives_every_core_tasks() -> None:
    refs = [ObjectRef(f"k{i:03d}", 10) for i in range(40)]
    tasks = make_tasks("b", refs, set(), objects_per_task(len(refs), 2))
    assert len(tasks) >= 2 * TASKS_PER_CORE - 1 and sum(len(t.objects) for t in tasks) == 40
