"""``cbir upsert``: add or replace images in the live index (see cbir.write_cli)."""

from cbir.write_cli import add_upsert_arguments as add_arguments
from cbir.write_cli import run_upsert as run

__all__ = ["add_arguments", "run"]
