"""Test-only views into the embedder: ImageNet logits (to prove the weights are wired right) and
embedding already-decoded images. Kept here so the product's Embedder carries no test code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from cbir.embedding import Embedder
from cbir.embedding.preprocess import prepare_image


def classify(embedder: Embedder, pixels: np.ndarray) -> np.ndarray:
    """ImageNet logits of the network's own classifier (efficientnet_lite0 only)."""
    pipeline = embedder._pipeline  # the torch pipeline the runtimes were built from
    head: Any = pipeline.net.net  # the classifier-bearing network under the embedding wrapper
    mean, std = pipeline.mean, pipeline.std
    with torch.inference_mode():
        x = torch.from_numpy(np.array(pixels)).to(mean.device)
        x = (x.permute(0, 3, 1, 2).to(mean.dtype) - mean) / std
        return head(x).float().cpu().numpy()


def embed_images(embedder: Embedder, images: Sequence[Image.Image]) -> np.ndarray:
    """Already-decoded images (full resolution, no JPEG draft) -> (N, dim) vectors."""
    pixels = [prepare_image(im, embedder.preprocess).pixels for im in images]
    return embedder.embed_pixels(np.stack(pixels))
