#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript): prints the GPUs this
# executor may use as {"name": "gpu", "addresses": ["0", "1", ...]}. Honours
# CUDA_VISIBLE_DEVICES (Kubernetes device plugins and YARN set it) so addresses are the
# indices CUDA will see; an executor without nvidia-smi or GPUs reports none.
set -euo pipefail
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  count=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
elif command -v nvidia-smi >/dev/null 2>&1; then
  count=$(nvidia-smi --query-gpu=index --format=csv,noheader | grep -c . || true)
else
  count=0
fi
addresses=""
for ((i = 0; i < count; i++)); do
  addresses+="${addresses:+,}\"$i\""
done
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
