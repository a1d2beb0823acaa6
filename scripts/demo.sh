#!/usr/bin/env bash
# The README's first command: set up (idempotent), then run the whole system locally on bundled
# photos and query it. Extra arguments go to `cbir demo` (e.g. --no-serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cbir demo "$@"
