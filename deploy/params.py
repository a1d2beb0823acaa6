"""An overlay's parameters (``overlay.toml``) and the sizing rules derived from them.

Sizing rules (documented in docs/operations.md):

- memory (request = limit, Guaranteed QoS)
  = ``memory_base`` + ``index_bytes`` x ``memory_overhead``.
  ``index_bytes`` is one shard's index on S3 (``index.faiss`` + ``ids.parquet``). The default
  overhead 2.2 covers the resident index, a second copy while a LoadIndex swap holds both, and
  ~20% for the id table, search buffers and allocator slack; 1.2 is enough if indexes are only
  ever rolled by replacing pods.
  With several workers (``--workers`` = the CPU request rounded up, set through
  ``CBIR_WORKERS``) the index is memory-mapped once for all of them and each further worker
  adds ``worker_memory`` (its interpreter, gRPC, the id -> key table and IVF's id map).
- local scratch (emptyDir + ephemeral-storage) = 2 x ``index_bytes`` + 1 GiB: the fetched files
  of the serving version and of the one being loaded (3 x with workers: the mapped files of
  the version kept for pinned queries stay on disk until the workers unmap them).
- startup budget = 60 s + ``index_bytes`` / ``index_load_mib_per_s``: the startupProbe allows that
  long for the index to be fetched and loaded before the kubelet gives up on the pod.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbir.model_names import DEFAULT_MODEL
from deploy.tls import TLS_MODES
from deploy.yamlio import dump_all

MI = 1024**2
_UNITS = {"": 1, "Ki": 1024, "Mi": MI, "Gi": 1024**3, "Ti": 1024**4,
          "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?\s*$")


class ParamsError(ValueError):
    """An overlay.toml value is missing, unknown or out of range."""


def parse_bytes(text: str | int) -> int:
    """'6Gi' / '500M' / 1024 -> bytes (Kubernetes quantity suffixes)."""
    if isinstance(text, int):
        return text
    match = _QUANTITY.match(text)
    if not match:
        raise ParamsError(f"not a byte quantity: {text!r} (e.g. 512Mi, 6Gi)")
    return math.ceil(float(match.group(1)) * _UNITS[match.group(2) or ""])


def parse_cpu(text: str) -> float:
    """'500m' / '2' / '1.5' -> cores (a Kubernetes CPU quantity)."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)(m?)\s*$", text)
    if not match:
        raise ParamsError(f"not a CPU quantity: {text!r} (e.g. 500m, 2)")
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def mebibytes(n_bytes: float) -> str:
    """Bytes -> a Kubernetes quantity in whole Mi, rounded up."""
    return f"{math.ceil(n_bytes / MI)}Mi"


@dataclass(frozen=True)
class OverlayParams:
    name: str
    namespace: str
    shards: int
    replicas: int
    image_registry: str
    image_tag: str
    index_uri: str
    # The next index version, served beside the current one by cbir-shard-K-next Deployments
    # during a blue/green roll; "" when no roll is under way.
    next_index_uri: str = ""
    images_uri: str = "s3://BUCKET/images/"
    embeddings_uri: str = "s3://BUCKET/embeddings/"
    build_output_uri: str = "s3://BUCKET/indexes/next"
    expect_model_version: str = ""
    index_bytes: str = "1Gi"
    memory_overhead: float = 2.2
    memory_base: str = "512Mi"
    index_load_mib_per_s: float = 50.0
    shard_cpu: str = "1"
    # Memory of each shard worker beyond the first (the index itself is mapped once).
    worker_memory: str = "256Mi"
    anti_affinity: str = "preferred"  # "required": never two replicas of a shard on one node
    # "tls": servers serve TLS from Secrets; "mtls": shards also require the coordinator's
    # client certificate (deploy/tls.py; docs/security.md).
    tls: str = "off"
    # Shards load (LoadIndex on the loopback admin port, or a pointer's target) only under this
    # root; "" = the folder holding index_uri (e.g. s3://cbir-prod/indexes). docs/security.md.
    allowed_index_root: str = ""
    drain_seconds: int = 20
    resolve_interval: int = 5
    coordinator_min_replicas: int = 2
    coordinator_max_replicas: int = 10
    model: str = DEFAULT_MODEL
    s3_secret: str = "cbir-s3"
    build_parallelism: int = 4
    backfill_batch_size: int = 256
    spark_executors: int = 2
    spark_executor_cores: int = 4
    spark_executor_memory: str = "8g"
    spark_executor_gpus: int = 0  # >0: executors request nvidia.com/gpu and embed on CUDA

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ParamsError("shards must be >= 1")
        if self.replicas < 2:
            # One replica cannot survive a node drain or a roll without a gap in that shard.
            raise ParamsError("replicas must be >= 2 (a shard needs a spare to drain a node)")
        if self.anti_affinity not in ("preferred", "required"):
            raise ParamsError("anti_affinity must be 'preferred' or 'required'")
        if self.tls not in TLS_MODES:
            raise ParamsError("tls must be 'off', 'tls' or 'mtls'")
        if self.drain_seconds <= self.resolve_interval:
            raise ParamsError("drain_seconds must exceed resolve_interval (coordinators must "
                              "notice a draining replica is gone before it stops answering)")
        parse_bytes(self.index_bytes)
        parse_bytes(self.memory_base)
        parse_bytes(self.worker_memory)
        parse_cpu(self.shard_cpu)
        if any(c in self.allowed_index_root for c in "?#"):
            raise ParamsError("allowed_index_root must be a plain URI (no '?' or '#')")

    # ---- derived sizes ------------------------------------------------------------------
    @property
    def index_size(self) -> int:
        return parse_bytes(self.index_bytes)

    @property
    def shard_workers(self) -> int:
        """What the kubelet puts in CBIR_WORKERS: the CPU request in whole cores, rounded up."""
        return max(1, math.ceil(parse_cpu(self.shard_cpu)))

    @property
    def shard_memory(self) -> str:
        extra = (self.shard_workers - 1) * parse_bytes(self.worker_memory)
        return mebibytes(parse_bytes(self.memory_base) + self.index_size * self.memory_overhead
                         + extra)

    @property
    def shard_scratch(self) -> str:
        copies = 3 if self.shard_workers > 1 else 2
        return mebibytes(copies * self.index_size + 1024 * MI)

    @property
    def startup_failure_threshold(self) -> int:
        """startupProbe failures allowed at a 10 s period: the index load budget."""
        budget_s = 60 + self.index_size / (self.index_load_mib_per_s * MI)
        return math.ceil(budget_s / 10)

    @property
    def grace_seconds(self) -> int:
        return self.drain_seconds + 15

    @property
    def min_ready_seconds(self) -> int:
        # DNS answers (CoreDNS TTL 5 s) + one coordinator re-resolve, then the old pod may go.
        return self.resolve_interval + 5

    def index_root(self, index_uri: str) -> str:
        """What a shard serving ``index_uri`` may load from: ``allowed_index_root`` or the
        folder holding the index (``s3://b/indexes/v1`` -> ``s3://b/indexes``)."""
        if self.allowed_index_root:
            return self.allowed_index_root.rstrip("/")
        head, _, _ = index_uri.rstrip("/").rpartition("/")
        return head if head and not head.endswith(":/") else index_uri.rstrip("/")

    def image(self, target: str) -> tuple[str, str]:
        """(name, tag) of one of the Dockerfile's targets: server, coordinator, jobs."""
        return f"{self.image_registry}/cbir-{target}", self.image_tag


def load_params(path: Path, overrides: dict[str, Any] | None = None) -> OverlayParams:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(OverlayParams)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"{path}: unknown parameter(s) {unknown}")
    try:
        return OverlayParams(**raw)
    except TypeError as exc:  # a required parameter is missing
        raise ParamsError(f"{path}: {exc}") from exc


def dump_params(params: OverlayParams) -> str:
    """overlay.toml text (flat scalars only: JSON strings are valid TOML basic strings)."""
    lines = [
        "# Parameters of this overlay. Edit, then `python -m deploy.render --overlay <this dir>`",
        "# writes every other file here (tests/deploy checks they are in sync).",
    ]
    for field in dataclasses.fields(OverlayParams):
        value = getattr(params, field.name)
        text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{field.name} = {text}")
    return "\n".join(lines) + "\n"


def kustomize_images(params: OverlayParams, targets: tuple[str, ...]) -> list[dict[str, str]]:
    """kustomize `images:` entries: placeholder names (cbir-server, ...) -> the registry."""
    out = []
    for target in targets:
        name, tag = params.image(target)
        out.append({"name": f"cbir-{target}", "newName": name, "newTag": tag})
    return out


def json_patch(kind: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A kustomize ``patches`` entry: JSON 6902 ``ops`` on the object ``kind``/``name``."""
    return {"target": {"kind": kind, "name": name}, "patch": dump_all([ops])}


def replace_op(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def kustomization(params: OverlayParams, resources: list[str], targets: tuple[str, ...],
                  **sections: Any) -> dict[str, Any]:
    """An overlay's kustomization: namespace, recommended labels and the images of
    ``targets``, then ``sections`` (configMapGenerator, patches) in the order given."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": params.namespace, "resources": resources,
            "labels": kustomize_labels(params), "images": kustomize_images(params, targets),
            **sections}


def kustomize_labels(params: OverlayParams) -> list[dict[str, Any]]:
    """Recommended labels on every object and pod template; selectors stay as written."""
    return [{"pairs": {"app.kubernetes.io/name": "cbir", "app.kubernetes.io/part-of": "cbir",
                       "app.kubernetes.io/managed-by": "kustomize",
                       "app.kubernetes.io/instance": params.name},
             "includeSelectors": False, "includeTemplates": True}]
