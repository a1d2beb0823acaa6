"""``run_task``: the one function every engine runs (sequentially or on a Spark executor).

Commit protocol: the errors part is written first, the embeddings part last; the embeddings
part (even with zero rows) is the task's commit. If it exists the task is done: a retry or a
re-run returns at once without touching anything.
"""

from __future__ import annotations

import logging
import time

from cbir import storage
from jobs.embed import mapper, writer
from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult

log = logging.getLogger(__name__)


def run_task(task: EmbedTask, config: BackfillConfig) -> TaskResult:
    start = time.perf_counter()
    target = writer.part_uri(config.output, task.part)
    if storage.exists(target):
        # Committed by an earlier attempt (Spark retry, concurrent re-run): count, don't redo.
        log.info("%s already committed, skipping", task.part)
        err = writer.errors_uri(config.output, task.part)
        num_errors = writer.count_rows(err) if storage.exists(err) else 0
        return TaskResult(task.part, written=False, num_images=writer.count_rows(target),
                          num_errors=num_errors)
    rows, errors, stats = mapper.embed_task(config, task)
    if errors.keys:
        writer.write_table(writer.errors_uri(config.output, task.part),
                           writer.errors_table(errors))
    table = writer.embeddings_table(rows, config.dim, config.model, config.model_version,
                                    config.num_shards)
    writer.write_table(target, table)
    return TaskResult(
        task.part, written=True, num_images=table.num_rows, num_errors=len(errors.keys),
        bytes_read=stats.bytes_read, fetch_retries=stats.fetch_retries,
        seconds=time.perf_counter() - start,
    )
