"""``embed_and_commit``: the backfill's work function, which ``jobs.engines`` runs for every
task (sequentially or on a Spark executor).

Commit protocol: the errors part is written first, the embeddings part last; the embeddings
part (even with zero rows) is the task's commit. If it exists the task is done: a retry or a
re-run returns at once without touching anything.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from cbir import storage
from jobs.embed import mapper, writer
from jobs.embed.config import BackfillConfig, EmbedTask, TaskResult

log = logging.getLogger(__name__)


def _committed(task: EmbedTask, config: BackfillConfig, target: str) -> TaskResult:
    """What an already committed part holds (read from the footers / the reason column)."""
    err = writer.errors_uri(config.output, task.part)
    reasons = writer.reason_counts(err) if storage.exists(err) else {}
    return TaskResult(task.part, written=False, num_images=writer.count_rows(target),
                      num_errors=sum(reasons.values()),
                      error_reasons=tuple(sorted(reasons.items())))


def embed_and_commit(task: EmbedTask, config: BackfillConfig) -> TaskResult:
    start = time.perf_counter()
    s3_retries_before = storage.S3_REQUESTS.retries()  # one task at a time per process
    target = writer.part_uri(config.output, task.part)
    if storage.exists(target):
        # Committed by an earlier attempt (Spark retry, concurrent re-run): count, don't redo.
        log.info("%s already committed, skipping", task.part)
        return _committed(task, config, target)
    rows, errors, stats = mapper.embed_task(config, task)
    if errors.keys:
        writer.write_table(writer.errors_uri(config.output, task.part),
                           writer.errors_table(errors))
    table = writer.embeddings_table(rows, config.dim, config.model, config.model_version,
                                    config.num_shards, config.attributes, task.bucket)
    writer.write_table(target, table)
    return TaskResult(
        task.part, written=True, num_images=table.num_rows, num_errors=len(errors.keys),
        bytes_read=stats.bytes_read, fetch_retries=stats.fetch_retries,
        s3_retries=storage.S3_REQUESTS.retries() - s3_retries_before,
        error_reasons=tuple(sorted(Counter(errors.reasons).items())),
        seconds=time.perf_counter() - start,
    )
