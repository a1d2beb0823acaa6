"""``cbir delete``: remove images from the live index (see cbir.write_cli)."""

from cbir.write_cli import add_delete_arguments as add_arguments
from cbir.write_cli import run_delete as run

__all__ = ["add_arguments", "run"]
