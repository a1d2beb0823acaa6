"""Sequential engine: every shard task in this process, one after the other."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from jobs.build_index.build import ShardOutcome, ShardTask, run_task


def run_sequential(tasks: Sequence[ShardTask], trained: bytes) -> list[ShardOutcome]:
    return [run_task(task, trained) for task in tqdm(tasks, desc="shards", unit="shard")]
