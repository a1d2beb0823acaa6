"""The ``cbir`` console script: one entry point, subcommands dispatched lazily.

Each subcommand lives with its component (``<package>.cli`` exposing ``add_arguments(parser)``
and ``run(args) -> int``) and is imported only when used, so ``cbir serve-shard`` never imports
torch or pyspark.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import cbir
from cbir.errors import CbirError
from cbir.options import DefaultsHelpFormatter

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo.run", "run the whole system locally on bundled photos and query it"),
    "backfill": ("jobs.embed.cli", "embed every image of an S3 bucket into Parquet (Spark)"),
    "build-index": ("jobs.build_index.cli", "build one Faiss index per shard from embeddings"),
    "compact": ("jobs.compact.cli", "fold the write-ahead log into a new index version"),
    "serve-shard": ("shard_server.cli", "serve one shard's index over gRPC"),
    "serve-coordinator": ("coordinator.cli", "fan queries out to every shard and merge top-K"),
    "index-pointer": ("shard_server.pointer_cli", "read or atomically flip an index pointer"),
    "query": ("cbir.query_cli", "query a coordinator by image file or image id"),
    "info": ("cbir.info_cli", "describe an embeddings run, an index, a pointer or a live cluster"),
    "upsert": ("cbir.upsert_cli", "add or replace images in the live index via a coordinator"),
    "delete": ("cbir.delete_cli", "remove images from the live index via a coordinator"),
    "watch": ("cbir.watch_cli", "apply S3 event notifications (SQS) to the live index"),
    "serve-web": ("web.cli", "serve the web page and the HTTP/JSON API over a coordinator"),
}


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    level_name = os.environ.get("CBIR_LOG_LEVEL")
    logging.basicConfig(
        level=level_name.upper() if level_name else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # botocore/py4j/grpc are loud at INFO and say nothing an operator needs.
    for noisy in ("botocore", "boto3", "urllib3", "py4j", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


VERBOSE_HELP = "-v info, -vv debug"


class CliParser(argparse.ArgumentParser):
    """A usage mistake is one line (argparse would print the whole usage block first); subparsers
    inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = CliParser(prog="cbir", description=__doc__.splitlines()[0],
                       formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cbir {cbir.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text,
                            formatter_class=DefaultsHelpFormatter)
        # -v also after the subcommand; SUPPRESS keeps a -v given before it when none follows.
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)
        # Only the chosen subcommand's module is imported (keeps startup light).
        if name == wanted:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC core prints INFO lines (e.g. every failed TLS handshake) on stderr; the CLI's own
    # one-line error says what happened. Read when grpc is first imported, i.e. below.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    _configure_logging(args.verbose)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args))
    except CbirError as exc:
        print(f"cbir {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `cbir info ... | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"cbir {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
