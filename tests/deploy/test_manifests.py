"""Every overlay renders with the real kubectl, validates strictly against the Kubernetes 1.32
schemas offline, and means what it should: shard Services/PDBs/probes, coordinator discovery,
Indexed Job size, Spark wiring, no credentials."""

from __future__ import annotations

import copy
import math
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.params import OverlayParams, load_params, parse_bytes
from tests.deploy.manifests import (
    K8S_VERSION,
    OVERLAYS,
    Doc,
    check_coordinator,
    check_no_credentials,
    check_shard,
    component,
    container,
    expand,
    flag,
    kustomize,
    named,
    of_kind,
    pod_labels,
    probe_target,
    resolve_env,
    selects,
)

OVERLAY_NAMES = sorted(p.name for p in OVERLAYS.iterdir() if (p / "overlay.toml").exists())
KUSTOMIZATIONS = ["", "jobs/backfill", "jobs/build-index"]


@cache
def rendered(overlay: str, part: str = "") -> list[Doc]:
    return kustomize(OVERLAYS / overlay / part)


def params_of(overlay: str) -> OverlayParams:
    return load_params(OVERLAYS / overlay / "overlay.toml")


def test_dev_and_prod_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAY_NAMES)
    assert (params_of("dev").shards, params_of("dev").replicas) == (2, 2)
    assert (params_of("prod").shards, params_of("prod").replicas) == (8, 3)


@pytest.mark.parametrize("part", KUSTOMIZATIONS)
@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_renders_and_validates_strictly(overlay: str, part: str) -> None:
    docs = rendered(overlay, part)
    assert docs
    for doc in docs:
        # Raises on any unknown field, wrong type or missing schema (strict: no extra fields).
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == params_of(overlay).namespace
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == overlay


def test_strict_validation_rejects_a_typo() -> None:
    doc = copy.deepcopy(named(rendered("dev"), "Deployment", "cbir-shard-0"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_shard_has_matching_service_pdb_probes(overlay: str) -> None:
    docs, params = rendered(overlay), params_of(overlay)
    assert len(component(docs, "Deployment", "shard")) == params.shards
    for shard in range(params.shards):
        assert check_shard(docs, shard) == []
        dep = named(docs, "Deployment", f"cbir-shard-{shard}")
        assert dep["spec"]["replicas"] == params.replicas
        resources = container(dep)["resources"]
        assert resources["requests"]["memory"] == params.shard_memory == \
            resources["limits"]["memory"]
        assert flag(container(dep)["args"], "index") == params.index_uri


def test_shard_check_catches_a_wrong_selector() -> None:
    docs = copy.deepcopy(rendered("prod"))
    named(docs, "Service", "cbir-shard-2")["spec"]["selector"]["cbir.io/shard"] = "3"
    assert any("Service selects" in p for p in check_shard(docs, 2))
    named(docs, "Service", "cbir-shard-2")["spec"]["selector"] = {"app.kubernetes.io/name": "cbir"}
    assert any("Service selects" in p for p in check_shard(docs, 2))


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_coordinator_discovers_exactly_the_shard_services(overlay: str) -> None:
    docs, params = rendered(overlay), params_of(overlay)
    assert check_coordinator(docs, params.namespace) == []
    dep = named(docs, "Deployment", "cbir-coordinator")
    ctr = container(dep)
    probes = [probe_target(ctr[p]) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all(p is not None for p in probes)
    assert {p["port"] for p in probes if p} == {c["containerPort"] for c in ctr["ports"]
                                         if c["name"] == "grpc"}
    assert probes[1] is not None and probes[1]["service"] == "cbir.v1.Coordinator"
    hpa = named(docs, "HorizontalPodAutoscaler", "cbir-coordinator")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == params.coordinator_min_replicas
    pdb = named(docs, "PodDisruptionBudget", "cbir-coordinator")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()


def test_coordinator_check_catches_a_shard_count_mismatch() -> None:
    docs = copy.deepcopy(rendered("dev"))
    cm = next(d for d in of_kind(docs, "ConfigMap")
              if d["metadata"]["name"].startswith("cbir-coordinator-config"))
    cm["data"]["CBIR_SHARDS"] = "3"
    assert check_coordinator(docs, "cbir-dev")
    cm["data"]["CBIR_SHARDS"] = "2"
    cm["data"]["CBIR_SHARD_DNS"] = "cbir-shard-{shard}.default.svc.cluster.local:50051"
    assert check_coordinator(docs, "cbir-dev")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_index_build_is_one_indexed_pod_per_shard(overlay: str) -> None:
    shards = len(component(rendered(overlay), "Deployment", "shard"))
    job = named(rendered(overlay, "jobs/build-index"), "Job", "cbir-build-index")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == shards == params_of(overlay).shards
    assert 1 <= job["spec"]["parallelism"] <= shards
    ctr = container(job)
    assert flag(ctr["args"], "shards") == str(shards)
    assert flag(ctr["args"], "shard-only") == "$(SHARD_INDEX)"
    index_env = next(e for e in ctr["env"] if e["name"] == "SHARD_INDEX")
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _spark_conf(docs: list[Doc]) -> dict[str, str]:
    cm = next(d for d in of_kind(docs, "ConfigMap")
              if d["metadata"]["name"].startswith("cbir-spark-conf"))
    lines = [ln.split(None, 1) for ln in cm["data"]["spark-defaults.conf"].splitlines()
             if ln.strip() and not ln.startswith("#")]
    return {k: v.strip() for k, v in lines}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_backfill_runs_spark_on_kubernetes_with_rbac(overlay: str) -> None:
    docs, params = rendered(overlay, "jobs/backfill"), params_of(overlay)
    job = named(docs, "Job", "cbir-backfill")
    pod, ctr = job["spec"]["template"]["spec"], container(job)
    assert flag(ctr["args"], "master") == "k8s://https://kubernetes.default.svc"
    conf = _spark_conf(docs)
    assert conf["spark.kubernetes.namespace"] == params.namespace
    assert conf["spark.kubernetes.container.image"] == ctr["image"]  # executors run our image
    env = {e["name"]: e for e in ctr["env"]}
    submit = expand([env["PYSPARK_SUBMIT_ARGS"]["value"]], {"POD_IP": "10.0.0.7"})[0]
    assert "spark.driver.host=10.0.0.7" in submit
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # The executor pod template is mounted where spark-defaults.conf says, and is a valid Pod.
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == env["SPARK_CONF_DIR"]["value"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = named(docs, "ConfigMap", volume["configMap"]["name"])
    template_path = Path(conf["spark.kubernetes.executor.podTemplateFile"])
    assert template_path.parent == Path(mount["mountPath"])
    executor = yaml.safe_load(cm["data"][template_path.name])
    kubernetes_validate.validate(executor, K8S_VERSION, strict=True)
    assert executor["spec"]["containers"][0]["name"] == \
        conf["spark.kubernetes.executor.podTemplateContainerName"]
    # The driver's ServiceAccount may create executor pods (RBAC lives in the serving overlay).
    serving = rendered(overlay)
    sa = pod["serviceAccountName"]
    binding = next(b for b in of_kind(serving, "RoleBinding")
                   if any(s["name"] == sa for s in b["subjects"]))
    role = named(serving, "Role", binding["roleRef"]["name"])
    assert any("pods" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    if params.spark_executor_gpus:
        assert conf["spark.executor.resource.gpu.vendor"] == "nvidia.com"
        assert int(conf["spark.executor.resource.gpu.amount"]) == params.spark_executor_gpus
        assert float(conf["spark.task.resource.gpu.amount"]) > 0


def test_prod_executors_use_gpus() -> None:
    assert params_of("prod").spark_executor_gpus >= 1
    assert "spark.executor.resource.gpu.amount" in _spark_conf(
        rendered("prod", "jobs/backfill"))


@pytest.mark.parametrize("part", KUSTOMIZATIONS)
@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_no_credentials_in_manifests(overlay: str, part: str) -> None:
    docs = rendered(overlay, part)
    assert check_no_credentials(docs) == []
    secret = params_of(overlay).s3_secret
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        refs = [e["secretRef"]["name"] for e in container(workload).get("envFrom", [])]
        assert refs == [secret], f"{workload['metadata']['name']} gets S3 settings from {refs}"


def test_credential_check_catches_a_literal_key() -> None:
    docs = copy.deepcopy(rendered("dev"))
    ctr = named(docs, "Deployment", "cbir-shard-0")["spec"]["template"]["spec"]["containers"][0]
    ctr["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    assert check_no_credentials(docs)


def test_prod_serves_mutual_tls_from_mounted_secrets() -> None:
    """overlay prod: tls = "mtls". Secrets are mounted as whole volumes (rotation reaches the
    pods), servers get their --tls-* flags, the coordinator dials shards with its client cert,
    and every probe is a TLS exec probe (the kubelet's grpc probe cannot do TLS)."""
    docs = rendered("prod")
    shard = named(docs, "Deployment", "cbir-shard-0")
    coord = named(docs, "Deployment", "cbir-coordinator")
    for dep, secret in ((shard, "cbir-shard-tls"), (coord, "cbir-coordinator-tls")):
        pod = dep["spec"]["template"]["spec"]
        ctr = container(dep)
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {"tls": secret, "ca": "cbir-ca"}
        mounts = {m["name"]: m for m in ctr["volumeMounts"]}
        assert all("subPath" not in mounts[n] and mounts[n]["readOnly"] for n in ("tls", "ca"))
        assert flag(ctr["args"], "tls-cert") == "/etc/cbir/tls/tls.crt"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "exec" in ctr[probe] and "grpc" not in ctr[probe]
            assert "--tls-cert=/etc/cbir/tls/tls.crt" in ctr[probe]["exec"]["command"]
    assert "--tls-require-client-cert" in container(shard)["args"]
    assert flag(container(coord)["args"], "shard-tls-cert") == "/etc/cbir/tls/tls.crt"
    dev = named(rendered("dev"), "Deployment", "cbir-shard-0")
    assert "grpc" in container(dev)["readinessProbe"]  # dev stays plaintext


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_web_front_end_serves_behind_its_service(overlay: str) -> None:
    """cbir-web: its own image (no torch), dials the coordinator's Service on its gRPC port,
    a Service and PDB that select exactly its pods, HTTP probes on the port it listens on."""
    docs = rendered(overlay)
    params = params_of(overlay)
    dep = named(docs, "Deployment", "cbir-web")
    ctr = container(dep)
    assert ctr["image"] == f"{params.image_registry}/cbir-web:{params.image_tag}"
    assert ctr["args"][0] == "serve-web"
    host, port = flag(ctr["args"], "coordinator").split(":")
    coordinator = named(docs, "Service", host)
    assert any(p["port"] == int(port) and p["name"] == "grpc"
               for p in coordinator["spec"]["ports"])
    listen = int(flag(ctr["args"], "port"))
    assert [p["containerPort"] for p in ctr["ports"] if p["name"] == "http"] == [listen]
    pods = pod_labels(dep)
    assert pods["app.kubernetes.io/component"] == "web"
    for kind in ("Service", "PodDisruptionBudget"):
        doc = named(docs, kind, "cbir-web")
        selector = doc["spec"]["selector"] if kind == "Service" else \
            doc["spec"]["selector"]["matchLabels"]
        assert selects(selector, pods)
        others = [w for w in of_kind(docs, "Deployment") if w is not dep]
        assert not any(selects(selector, pod_labels(w)) for w in others), kind
    service = named(docs, "Service", "cbir-web")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["livenessProbe"]["tcpSocket"]["port"] == "http"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and \
        ctr["securityContext"]["readOnlyRootFilesystem"]
    scheme = ctr["readinessProbe"]["httpGet"]["scheme"]
    if params.tls == "off":
        assert scheme == "HTTP" and not any(a.startswith("--tls") for a in ctr["args"])
        return
    assert scheme == "HTTPS"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "cbir-web-tls", "ca": "cbir-ca"}
    assert flag(ctr["args"], "tls-cert") == "/etc/cbir/tls/tls.crt"
    assert flag(ctr["args"], "coordinator-tls-ca") == "/etc/cbir/ca/ca.crt"
    assert flag(ctr["args"], "coordinator-tls-server-name") == "cbir-coordinator"
    if params.tls == "mtls":
        assert flag(ctr["args"], "coordinator-tls-cert") == "/etc/cbir/tls/tls.crt"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_workers_follow_the_cpu_request(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards and coordinators run one worker per requested core: CBIR_WORKERS comes from the
    pod's own CPU request (the kubelet rounds it up to whole cores), the CLI reads it as
    --workers, and the shard's memory request budgets the extra workers."""
    from cbir.cli import build_parser

    docs = rendered(overlay)
    params = params_of(overlay)
    shards = component(docs, "Deployment", "shard")
    coordinator = named(docs, "Deployment", "cbir-coordinator")
    for workload in [*shards, coordinator]:
        ctr = container(workload)
        (var,) = [v for v in ctr["env"] if v["name"] == "CBIR_WORKERS"]
        assert var["valueFrom"]["resourceFieldRef"] == {
            "containerName": ctr["name"], "resource": "requests.cpu", "divisor": "1"}
        assert not any(a.startswith("--workers") for a in ctr["args"])  # one source: the env
        env = resolve_env(ctr, docs, workload["metadata"]["namespace"])
        cores = float(str(ctr["resources"]["requests"]["cpu"]).rstrip("m")) / (
            1000 if str(ctr["resources"]["requests"]["cpu"]).endswith("m") else 1)
        assert int(env["CBIR_WORKERS"]) == max(1, math.ceil(cores))
        monkeypatch.setenv("CBIR_WORKERS", env["CBIR_WORKERS"])
        argv = expand(ctr["args"], {"SHARD_INDEX": "0", **env})
        args = build_parser(argv).parse_args(argv)  # the generated --workers reads the env
        assert args.workers == int(env["CBIR_WORKERS"])
    for workload in shards:
        ctr = container(workload)
        assert int(resolve_env(ctr, docs, "")["CBIR_WORKERS"]) == params.shard_workers
        assert ctr["resources"]["requests"]["memory"] == params.shard_memory
    expected_mi = math.ceil((parse_bytes(params.memory_base) + params.index_size
                             * params.memory_overhead + (params.shard_workers - 1)
                             * parse_bytes(params.worker_memory)) / 2**20)
    assert params.shard_memory == f"{expected_mi}Mi"
