"""The arguments every rendered container passes to `cbir` parse with the real CLI parser, so a
renamed or missing flag fails here instead of in a CrashLoopBackOff."""

from __future__ import annotations

import pytest

from cbir.cli import build_parser
from tests.deploy.manifests import OVERLAYS, container, expand, kustomize, of_kind, resolve_env

CASES = [(o.name, part) for o in sorted(OVERLAYS.iterdir()) if (o / "overlay.toml").exists()
         for part in ("", "jobs/backfill", "jobs/build-index")]
# What the kubelet / Job controller fill in at run time.
RUNTIME_ENV = {"SHARD_INDEX": "0", "POD_IP": "10.0.0.7", "POD_NAME": "p"}


@pytest.mark.parametrize(("overlay", "part"), CASES)
def test_container_args_parse(overlay: str, part: str) -> None:
    docs = kustomize(OVERLAYS / overlay / part)
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "Job")
    assert workloads
    for workload in workloads:
        ctr = container(workload)
        namespace = workload["metadata"]["namespace"]
        argv = expand(ctr["args"], {**RUNTIME_ENV, **resolve_env(ctr, docs, namespace)})
        assert not any("$(" in a for a in argv), f"unexpanded variable in {argv}"
        args, unknown = build_parser(argv).parse_known_args(argv)
        assert unknown == [], f"{workload['metadata']['name']}: unknown arguments {unknown}"
        assert args.command == argv[0]
