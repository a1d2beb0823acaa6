from __future__ import annotations

from pathlib import Path

import pytest

from cbir.errors import FailedPrecondition, NotFound
from cbir.schema import EmbedManifest, embeddings_schema, read_manifest, write_manifest


def test_embeddings_schema_carries_model_metadata() -> None:
    schema = embeddings_schema(1280, "efficientnet_lite0", "abc123")
    assert schema.field("embedding").type.list_size == 1280
    assert schema.metadata[b"cbir.model_version"] == b"abc123"


def test_manifest_roundtrip_and_validation(tmp_path: Path) -> None:
    uri = str(tmp_path / "_MANIFEST.json")
    manifest = EmbedManifest(model="m", model_version="v", dim=4, num_images=2, num_errors=1)
    write_manifest(uri, manifest)
    assert read_manifest(uri, EmbedManifest) == manifest
    (tmp_path / "bad.json").write_text('{"model": "m", "dim": -1}')
    with pytest.raises(FailedPrecondition, match="invalid manifest"):
        read_manifest(str(tmp_path / "bad.json"), EmbedManifest)
    with pytest.raises(NotFound, match="manifest not found"):
        read_manifest(str(tmp_path / "none.json"), EmbedManifest)
