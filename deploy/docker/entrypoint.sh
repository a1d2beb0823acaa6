#!/usr/bin/env bash
# Entrypoint of the cbir images.
#   executor ...  -> a Spark executor (the contract of Spark on Kubernetes: the driver creates the
#                    pod with args "executor" and passes everything else in SPARK_* variables)
#   anything else -> the cbir CLI: `serve-shard ...`, `backfill ...`, `build-index ...`
set -euo pipefail

if [ "${1:-}" = "executor" ]; then
  shift
  SPARK_HOME="${SPARK_HOME:?SPARK_HOME is not set (only the jobs image runs executors)}"
  # Spark passes the executor's JVM options as SPARK_JAVA_OPT_0, _1, ... in order.
  readarray -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n \
    | sed 's/^[^=]*=//' || true)
  exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
    -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
    -cp "${SPARK_CLASSPATH:+${SPARK_CLASSPATH}:}${SPARK_HOME}/jars/*" \
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
    --driver-url "${SPARK_DRIVER_URL}" \
    --executor-id "${SPARK_EXECUTOR_ID}" \
    --cores "${SPARK_EXECUTOR_CORES}" \
    --app-id "${SPARK_APPLICATION_ID}" \
    --hostname "${SPARK_EXECUTOR_POD_IP}" \
    --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
    --podName "${SPARK_EXECUTOR_POD_NAME}"
fi

exec cbir "$@"
