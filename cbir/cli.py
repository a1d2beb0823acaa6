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

from cbir.errors import CbirError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cbir.demo", "run the whole system locally on bundled photos and query it"),
    "backfill": ("jobs.embed.cli", "embed every image of an S3 bucket into Parquet (Spark)"),
    "build-index": ("jobs.build_index.cli", "build one Faiss index per shard from embeddings"),
    "serve-shard": ("shard_server.cli", "serve one shard's index over gRPC"),
    "serve-coordinator": ("coordinator.cli", "fan queries out to every shard and merge top-K"),
    "index-pointer": ("shard_server.pointer_cli", "read or atomically flip an index pointer"),
    "query": ("cbir.query_cli", "query a coordinator by image file or image id"),
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


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (keeps startup light).
        if name == wanted:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        print(f"cbir {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
