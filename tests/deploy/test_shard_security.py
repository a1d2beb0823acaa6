"""The rendered shard workloads match the locked admin surface (docs/security.md): every shard
serves a loopback admin port that no Service or containerPort exposes, and bounds the index
URIs it loads to the folder holding its index (or the overlay's allowed_index_root)."""

from __future__ import annotations

import pytest

from cbir.cli import build_parser
from deploy.params import OverlayParams, ParamsError
from deploy.render import SHARD_ADMIN_PORT
from tests.deploy.manifests import OVERLAYS, container, kustomize, of_kind

OVERLAY_DIRS = sorted(o for o in OVERLAYS.iterdir() if (o / "overlay.toml").exists())


@pytest.mark.parametrize("overlay", [o.name for o in OVERLAY_DIRS])
def test_shards_serve_admin_on_loopback_with_a_bounded_index_root(overlay: str) -> None:
    docs = kustomize(OVERLAYS / overlay)
    shards = [d for d in of_kind(docs, "Deployment")
              if d["metadata"]["labels"].get("app.kubernetes.io/component") == "shard"]
    assert shards
    for deployment in shards:
        ctr = container(deployment)
        args = build_parser(ctr["args"]).parse_args(ctr["args"])
        assert args.admin_port == SHARD_ADMIN_PORT
        index_folder = args.index.rstrip("/").rsplit("/", 1)[0]
        assert args.allowed_index_root == index_folder
        assert SHARD_ADMIN_PORT not in [p["containerPort"] for p in ctr.get("ports", [])]
    for service in of_kind(docs, "Service"):
        ports = [p.get("targetPort") for p in service["spec"]["ports"]]
        assert SHARD_ADMIN_PORT not in ports and "admin" not in ports


def _params(**kw: object) -> OverlayParams:
    return OverlayParams(name="t", namespace="n", shards=1, replicas=2, image_registry="r",
                         image_tag="1", index_uri="s3://b/indexes/v1", **kw)  # type: ignore[arg-type]


def test_index_root_defaults_to_the_index_folder_and_can_be_set() -> None:
    assert _params().index_root("s3://b/indexes/v1") == "s3://b/indexes"
    assert _params().index_root("s3://b/v1/") == "s3://b"
    assert _params(allowed_index_root="s3://b/ix/").index_root("s3://b/indexes/v1") == "s3://b/ix"
    with pytest.raises(ParamsError, match="no '\\?' or '#'"):
        _params(allowed_index_root="s3://b/ix#")
