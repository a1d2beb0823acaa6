"""Compaction: the current index version's embeddings + the write-ahead log -> a new
embeddings snapshot -> a new index version (the existing build) -> the pointer flipped
(docs/live_updates.md)."""
