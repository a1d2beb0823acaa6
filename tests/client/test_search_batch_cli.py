"""``CoordinatorClient.search_batch`` (sync and async) and ``cbir query --batch FILE``,
against a real coordinator (its shards: real gRPC servers with a brute-force servicer)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.client import AsyncCoordinatorClient, BatchQuery, CoordinatorClient
from cbir.errors import InvalidArgument
from tests.cli_capture import one_line, run_cli
from tests.coordinator.harness import Cluster, flat_top_k

ROOT = Path(__file__).resolve().parents[2]


def ids_of(hits: list[dict[str, object]]) -> list[int]:
    return [int(h["image_id"]) for h in hits]  # type: ignore[call-overload]


def test_sync_and_async_batches_equal_single_queries(cluster: Cluster) -> None:
    data = cluster.data
    queries = [BatchQuery(vector=data.vectors[3]), BatchQuery(image_id=int(data.ids[8])),
               BatchQuery(image_id=99), BatchQuery(image=b"\x89PNG some image")]
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        got = client.search_batch(queries, k=4, exclude_query_image=True)
        single_image = client.search_image(b"\x89PNG some image", k=4)

    async def main() -> list[list[int]]:
        async with AsyncCoordinatorClient(cluster.address, timeout_s=5) as client:
            answers = await client.search_batch(data.vectors[:3], k=4)
            return [[h.image_id for h in a.hits] for a in answers]

    assert [h.image_id for h in got[0].hits] == flat_top_k(data, data.vectors[3], 4)
    assert [h.image_id for h in got[1].hits] == flat_top_k(data, data.vectors[8], 5)[1:]
    assert (got[2].error_code, got[2].hits) == ("NOT_FOUND", ())
    assert "unknown image id 99" in got[2].error and got[2].to_json()["error_code"]
    assert got[3].hits == single_image.hits
    assert "error" not in got[0].to_json()
    assert asyncio.run(main()) == [flat_top_k(data, v, 4) for v in data.vectors[:3]]
    with pytest.raises(InvalidArgument, match="exactly one of"):
        BatchQuery(vector=[1.0], image_id=3)


def test_query_batch_jsonl_with_json_output(cluster: Cluster, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = cluster.data
    (tmp_path / "q.png").write_bytes(b"\x89PNG a query image")
    lines = [json.dumps({"vector": data.vectors[1].tolist()}),
             "",  # blank lines are skipped
             json.dumps({"image_id": str(int(data.ids[2]))}),
             json.dumps({"image_id": 99}),
             json.dumps({"image": "q.png"})]
    batch = tmp_path / "queries.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    rc, out, err = run_cli(capsys, "query", "--coordinator", cluster.address, "--batch",
                           str(batch), "--json", "--k", "3", "--filter", "")
    assert rc == 0, err
    answers = [json.loads(line) for line in out.strip().splitlines()]
    assert [a["query"] for a in answers] == [0, 1, 2, 3]
    assert ids_of(answers[0]["hits"]) == flat_top_k(data, data.vectors[1], 3)
    assert ids_of(answers[1]["hits"]) == flat_top_k(data, data.vectors[2], 3)
    assert answers[1]["hits"][0]["image_id_str"] == str(int(data.ids[2]))
    assert answers[2]["error_code"] == "NOT_FOUND" and answers[2]["hits"] == []
    assert len(answers[3]["hits"]) == 3


def test_query_batch_npy_table(cluster: Cluster, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    matrix = tmp_path / "queries.npy"
    np.save(matrix, cluster.data.vectors[:70])  # more than one request's worth
    rc, out, _ = run_cli(capsys, "query", "--coordinator", cluster.address, "--batch",
                         str(matrix), "--k", "2")
    assert rc == 0
    assert out.count("rank") == 70 and "query 69:" in out and "PARTIAL" not in out


@pytest.mark.parametrize(("content", "message"), [
    ("{\"vector\": [1, 2]\n", "line 1: not JSON"),
    ("{\"vector\": [0.1]}\n{\"imageid\": 3}\n", "line 2: expected one of"),
    ("{\"image_id\": -3}\n", "\"image_id\" must be a non-negative integer"),
    ("{\"vector\": \"abc\"}\n", "\"vector\" must be a non-empty list of numbers"),
    ("\n\n", "holds no queries"),
    ("{\"image\": \"missing.jpg\"}\n", "cannot read image file"),
])
def test_bad_batch_files_are_one_line_and_exit_2(cluster: Cluster, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 content: str, message: str) -> None:
    batch = tmp_path / "bad.jsonl"
    batch.write_text(content)
    rc, _, err = run_cli(capsys, "query", "--coordinator", cluster.address, "--batch",
                         str(batch))
    assert rc == 2 and message in one_line(err)


def test_bad_npy_and_missing_file(cluster: Cluster, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "ids.npy", np.arange(6).reshape(2, 3))
    rc, _, err = run_cli(capsys, "query", "--coordinator", cluster.address, "--batch",
                         str(tmp_path / "ids.npy"))
    assert rc == 2 and "2-D float matrix" in one_line(err)
    rc, _, err = run_cli(capsys, "query", "--coordinator", cluster.address, "--batch",
                         str(tmp_path / "nope.jsonl"))
    assert rc == 2 and "does not exist" in one_line(err)


def test_query_batch_in_a_subprocess(cluster: Cluster, tmp_path: Path) -> None:
    batch = tmp_path / "q.jsonl"
    batch.write_text("\n".join(json.dumps({"image_id": int(i)}) for i in cluster.data.ids[:3]))
    proc = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "query", "--coordinator", cluster.address,
         "--batch", str(batch), "--json", "--exclude-self", "--k", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [ids_of(a["hits"]) for a in answers] == [
        flat_top_k(cluster.data, cluster.data.vectors[i], 5)[1:] for i in range(3)]
