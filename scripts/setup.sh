#!/usr/bin/env bash
# Create .venv and install cbir with every extra, pinned (pyproject pins + constraints.txt).
# Idempotent: a second run only checks. Needs Python 3.11+ and Java 17+ (for Spark).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/system-deps.sh
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cbir-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade "pip==26.3" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[embed,spark,web,demo,bench,dev]" 2>&1 \
    | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import cbir, torch, torchvision, faiss, pyspark, grpc" \
    || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python --version))"
