from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cbir.cli import main
from tests.coordinator.harness import Cluster, flat_top_k

ROOT = Path(__file__).resolve().parents[2]


def test_query_json_by_image_id(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    target = int(cluster.data.ids[4])
    rc = main(["query", "--coordinator", cluster.address, "--image-id", str(target),
               "--k", "3", "--json", "--exclude-self"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"hits", "partial", "failed_shards"}
    assert out["partial"] is False and out["failed_shards"] == []
    assert [h["image_id"] for h in out["hits"]] == flat_top_k(
        cluster.data, cluster.data.vectors[4], 4)[1:]
    assert all({"image_id", "key", "score"} <= set(h) for h in out["hits"])


def test_query_table_by_image_file(cluster: Cluster, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "q.jpg"
    image.write_bytes(b"\xff\xd8\xff a jpeg-ish query")
    assert main(["query", "--coordinator", cluster.address, str(image), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "s3://photos/" in out and "PARTIAL" not in out


def test_query_errors_are_one_clean_line(cluster: Cluster,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--coordinator", cluster.address, "--image-id", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown image id 99" in err


def test_query_json_in_a_subprocess(cluster: Cluster) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "query", "--coordinator", cluster.address,
         "--image-id", str(int(cluster.data.ids[0])), "--json", "--timeout", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["hits"]) == 10 and out["hits"][0]["image_id"] == int(cluster.data.ids[0])
