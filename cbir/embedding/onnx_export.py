"""The ONNX graph of a model, exported from the very torch weights once per machine and cached.

The cache file is keyed by the model version (weights hash + preprocessing), the input size and
the exporter's opset, so a new version never reuses an old graph. Export is local (no
download); the file is written to a temp name in the cache directory and renamed into place,
so concurrent workers (Spark executors on one machine) never see a half-written graph: the last
rename wins and both files are the same function.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from cbir.embedding.runtimes import Pipeline

log = logging.getLogger(__name__)

ONNX_CACHE_ENV = "CBIR_ONNX_CACHE"
OPSET = 17


def cache_dir() -> Path:
    """``$CBIR_ONNX_CACHE``, else ``$XDG_CACHE_HOME/cbir/onnx``, else ``~/.cache/cbir/onnx``."""
    explicit = os.environ.get(ONNX_CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cbir" / "onnx"


def cached_path(name: str, version: str, input_size: int) -> Path:
    return cache_dir() / f"{name}-{version}-{input_size}px-opset{OPSET}.onnx"


def _export(pipeline: Pipeline, input_size: int, dest: Path) -> None:
    example = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        # The tracer warns that TF "same" padding is computed from shapes: they are fixed here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pipeline.eval(), (example,), str(dest), input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )


def onnx_model(pipeline: Pipeline, name: str, version: str, input_size: int) -> Path:
    """The cached graph for this model version, exported (atomically) if missing."""
    dest = cached_path(name, version, input_size)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        log.info("exporting %s (version %s) to ONNX: %s", name, version, dest)
        _export(pipeline, input_size, Path(tmp))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
