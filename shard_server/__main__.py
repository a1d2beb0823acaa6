"""``python -m shard_server --index URI --shard N [...]`` (same flags as ``cbir serve-shard``)."""

from __future__ import annotations

import sys

from cbir.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve-shard", *sys.argv[1:]]))
