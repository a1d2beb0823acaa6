"""Batch jobs: the embedding backfill and the index build (Spark or sequential)."""
