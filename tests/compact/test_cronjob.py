"""The compaction CronJob (deploy/k8s/jobs/compact) renders with the real kubectl, validates
strictly against the Kubernetes schemas, runs one compaction at a time, and its container's
arguments parse with the real ``cbir`` parser."""

from __future__ import annotations

import kubernetes_validate

from cbir.cli import build_parser
from tests.deploy.manifests import K8S_VERSION, REPO, kustomize, of_kind


def test_cronjob_renders_validates_and_parses() -> None:
    docs = kustomize(REPO / "deploy" / "k8s" / "jobs" / "compact")
    [cron] = of_kind(docs, "CronJob")
    assert kubernetes_validate.validate(cron, K8S_VERSION, strict=True) == K8S_VERSION
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    argv = pod["containers"][0]["args"]
    args = build_parser(argv).parse_args(argv)
    assert args.command == "compact" and args.index_pointer.endswith("/CURRENT")
