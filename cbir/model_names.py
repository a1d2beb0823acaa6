"""Model names without torch: CLIs check ``--model`` up front (one line, exit 2) and components
that never embed (a coordinator with ``--no-image-queries``, deploy tooling) name the default
without importing torch. ``cbir.embedding.models.MODELS`` holds a spec for each name (a test
keeps the two equal)."""

from __future__ import annotations

DEFAULT_MODEL = "efficientnet_lite0"
MODEL_NAMES = ("efficientnet_lite0", "resnet50")
# ``cbir.embedding.runtimes.RUNTIMES``, named here so flags need no torch import.
RUNTIME_NAMES = ("auto", "torch", "onnxruntime")
