"""The per-overlay parts of the two batch Jobs (deploy/k8s/jobs/{backfill,build-index}).

Backfill: ``cbir backfill`` is the Spark driver, in client mode inside the Job's pod, with master
``k8s://https://kubernetes.default.svc``; it creates its executor pods through the API server
(ServiceAccount ``cbir-spark``). Everything Spark needs that is the same for every run goes into
``spark-defaults.conf`` (mounted, ``SPARK_CONF_DIR``); the executor pod template carries what
Spark's own settings cannot say safely: S3 credentials by Secret reference, security context,
GPU tolerations. A plain Job (not a SparkApplication of the Spark operator) keeps every manifest
inside the core Kubernetes schemas, so all of it validates offline and needs no operator.
"""

from __future__ import annotations

from typing import Any

from deploy.params import OverlayParams, json_patch, kustomization, replace_op
from deploy.yamlio import dump_all

K8S_MASTER = "k8s://https://kubernetes.default.svc"
SPARK_CONF_DIR = "/etc/spark/conf"
EXECUTOR_TEMPLATE = "executor-pod-template.yaml"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
GPU_DISCOVERY_SCRIPT = "/opt/cbir/get-gpus-resources.sh"


def spark_defaults(params: OverlayParams) -> dict[str, str]:
    image, tag = params.image("jobs")
    conf = {
        "spark.kubernetes.namespace": params.namespace,
        "spark.kubernetes.container.image": f"{image}:{tag}",
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        # Client mode: the driver talks to the API server with its pod's own token.
        "spark.kubernetes.authenticate.caCertFile": f"{SA_DIR}/ca.crt",
        "spark.kubernetes.authenticate.oauthTokenFile": f"{SA_DIR}/token",
        "spark.kubernetes.executor.podTemplateFile": f"{SPARK_CONF_DIR}/{EXECUTOR_TEMPLATE}",
        "spark.kubernetes.executor.podTemplateContainerName": "executor",
        "spark.kubernetes.executor.podNamePrefix": "cbir-backfill",
        "spark.kubernetes.executor.deleteOnTermination": "true",
        "spark.executor.instances": str(params.spark_executors),
        "spark.executor.cores": str(params.spark_executor_cores),
        "spark.executor.memory": params.spark_executor_memory,
        "spark.executorEnv.PYSPARK_PYTHON": "/opt/venv/bin/python",
        "spark.dynamicAllocation.enabled": "false",
        # Fixed ports, so a NetworkPolicy can name them.
        "spark.driver.port": "7078",
        "spark.blockManager.port": "7079",
    }
    if params.spark_executor_gpus:
        gpus = params.spark_executor_gpus
        conf.update({
            # Spark requests nvidia.com/gpu for each executor pod from the vendor name.
            "spark.executor.resource.gpu.amount": str(gpus),
            "spark.executor.resource.gpu.vendor": "nvidia.com",
            "spark.executor.resource.gpu.discoveryScript": GPU_DISCOVERY_SCRIPT,
            # The executor's tasks share its GPU(s): decode/fetch is the CPU part, the CNN
            # batches are the GPU part.
            "spark.task.resource.gpu.amount": f"{gpus / params.spark_executor_cores:g}",
        })
    return conf


def spark_defaults_text(params: OverlayParams) -> str:
    conf = spark_defaults(params)
    width = max(len(k) for k in conf)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in conf.items())


def executor_pod_template(params: OverlayParams) -> dict[str, Any]:
    image, tag = params.image("jobs")
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "executor",
            "image": f"{image}:{tag}",  # Spark sets it again from spark.kubernetes.container.image
            "envFrom": [{"secretRef": {"name": params.s3_secret}}],
            "securityContext": {"allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
        }],
    }
    if params.spark_executor_gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"app.kubernetes.io/name": "cbir",
                                    "app.kubernetes.io/component": "backfill-executor",
                                    "app.kubernetes.io/instance": params.name}},
            "spec": spec}


def backfill_kustomization(params: OverlayParams, base: str) -> dict[str, Any]:
    # --num-shards: the embeddings' shard column must match the index's shard count.
    args = ["backfill", f"--input={params.images_uri}", f"--output={params.embeddings_uri}",
            "--engine=spark", f"--master={K8S_MASTER}", f"--num-shards={params.shards}",
            f"--batch-size={params.backfill_batch_size}"]
    return kustomization(
        params, [base], ("jobs",),
        configMapGenerator=[{"name": "cbir-spark-conf",
                             "files": ["spark-defaults.conf", EXECUTOR_TEMPLATE]}],
        patches=[json_patch("Job", "cbir-backfill", [
            replace_op("/spec/template/spec/containers/0/args", args)])])


def backfill_files(params: OverlayParams, base: str, header: str) -> dict[str, str]:
    def dump(doc: dict[str, Any]) -> str:
        return header + dump_all([doc])

    return {
        "kustomization.yaml": dump(backfill_kustomization(params, base)),
        "spark-defaults.conf": header + spark_defaults_text(params),
        EXECUTOR_TEMPLATE: dump(executor_pod_template(params)),
    }


def build_index_kustomization(params: OverlayParams, base: str) -> dict[str, Any]:
    args = ["build-index", f"--embeddings={params.embeddings_uri}",
            f"--output={params.build_output_uri}", f"--shards={params.shards}",
            "--engine=sequential", "--shard-only=$(SHARD_INDEX)"]
    return kustomization(
        params, [base], ("jobs",),
        patches=[json_patch("Job", "cbir-build-index", [
            replace_op("/spec/completions", params.shards),
            replace_op("/spec/parallelism", min(params.shards, params.build_parallelism)),
            replace_op("/spec/template/spec/containers/0/args", args)])])
