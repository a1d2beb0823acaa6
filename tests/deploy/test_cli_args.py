"""The arguments every rendered container passes to `cbir` parse with the real CLI parser, so a
renamed or missing flag fails here instead of in a CrashLoopBackOff."""

from __future__ import annotations

import os

import pytest

from cbir.cli import build_parser
from tests.deploy.manifests import OVERLAYS, container, expand, kustomize, of_kind, resolve_env

CASES = [(o.name, part) for o in sorted(OVERLAYS.iterdir()) if (o / "overlay.toml").exists()
         for part in ("", "jobs/backfill", "jobs/build-index")]
# What the kubelet / Job controller fill in at run time.
RUNTIME_ENV = {"SHARD_INDEX": "0", "POD_IP": "10.0.0.7", "POD_NAME": "p"}


@pytest.mark.parametrize(("overlay", "part"), CASES)
def test_container_args_parse(overlay: str, part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize(OVERLAYS / overlay / part)
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "Job")
    assert workloads
    for workload in workloads:
        ctr = container(workload)
        namespace = workload["metadata"]["namespace"]
        env = resolve_env(ctr, docs, namespace)
        argv = expand(ctr["args"], {**RUNTIME_ENV, **env})
        assert not any("$(" in a for a in argv), f"unexpanded variable in {argv}"
        # The container's CBIR_* variables are options too (cbir.options): a bad value in a
        # ConfigMap fails here (exit 2) instead of at the pod's start.
        for name in [n for n in os.environ if n.startswith("CBIR_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("CBIR_"):
                monkeypatch.setenv(name, value)
        args, unknown = build_parser(argv).parse_known_args(argv)
        assert unknown == [], f"{workload['metadata']['name']}: unknown arguments {unknown}"
        assert args.command == argv[0]
