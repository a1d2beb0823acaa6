"""The overlay renderer: checked-in overlays are exactly what it renders (drift), any shard count
renders to valid, consistent manifests, and the sizing rules hold."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from deploy.params import MI, OverlayParams, ParamsError, load_params, parse_bytes
from deploy.render import drift, main, render_overlay, write_overlay
from tests.deploy.manifests import (
    K8S_VERSION,
    OVERLAYS,
    REPO,
    check_coordinator,
    check_shard,
    component,
    kustomize,
    named,
)

OVERLAY_DIRS = sorted(p for p in OVERLAYS.iterdir() if (p / "overlay.toml").exists())


@pytest.mark.parametrize("overlay_dir", OVERLAY_DIRS, ids=lambda p: p.name)
def test_checked_in_overlay_matches_a_fresh_render(overlay_dir: Path) -> None:
    params = load_params(overlay_dir / "overlay.toml")
    assert drift(params, overlay_dir) == [], (
        f"{overlay_dir} is out of date: run `python -m deploy.render --overlay {overlay_dir}`")


def test_check_mode_of_the_cli_passes_on_the_repo() -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.render", "--all", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


def _copy_overlay(tmp_path: Path, name: str = "prod") -> Path:
    # Inside deploy/k8s/overlays would be touching the repo; a sibling tmp dir works the same
    # because the renderer writes relative paths to the bases.
    target = tmp_path / name
    shutil.copytree(OVERLAYS / name, target)
    return target


def test_drift_is_detected(tmp_path: Path) -> None:
    overlay = _copy_overlay(tmp_path)
    params = load_params(overlay / "overlay.toml")
    (overlay / "shards" / "shard-003.yaml").write_text("# hand edit\n")
    (overlay / "shards" / "shard-042.yaml").write_text("# stale\n")
    (overlay / "shards" / "shard-000.yaml").unlink()
    # (The copy's kustomizations differ too: their relative paths to the bases moved.)
    assert [p for p in drift(params, overlay) if p.startswith("shards/")] == [
        "shards/shard-000.yaml", "shards/shard-003.yaml", "shards/shard-042.yaml"]


def test_any_shard_count_renders_consistently(tmp_path: Path) -> None:
    overlay = _copy_overlay(tmp_path)
    assert main(["--overlay", str(overlay), "--shards", "5", "--replicas", "4",
                 "--next-index-uri", "s3://cbir-prod/indexes/v3"]) == 0
    params = load_params(overlay / "overlay.toml")  # the flags were saved
    assert (params.shards, params.replicas) == (5, 4)
    assert sorted(p.name for p in (overlay / "shards").iterdir()) == [
        f"shard-{k:03d}.yaml" for k in range(5)]  # shards 5..7 of the 8 were removed
    docs = kustomize(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # A blue/green roll: each shard has its main and its next Deployment, and the shard's
    # Service and PDB select the pods of both (and nothing else).
    assert len(component(docs, "Deployment", "shard")) == 10
    for shard in range(5):
        assert check_shard(docs, shard) == []
        nxt = named(docs, "Deployment", f"cbir-shard-{shard}-next")
        assert f"--index={params.next_index_uri}" in nxt["spec"]["template"]["spec"][
            "containers"][0]["args"]
    assert check_coordinator(docs, params.namespace) == []  # 5 shards (10 workloads)
    build = named(kustomize(overlay / "jobs" / "build-index"), "Job", "cbir-build-index")
    assert build["spec"]["completions"] == 5


def test_scaling_down_to_fewer_shards_with_write_overlay(tmp_path: Path) -> None:
    overlay = _copy_overlay(tmp_path, "dev")
    params = dataclasses.replace(load_params(overlay / "overlay.toml"), shards=1)
    assert write_overlay(params, overlay) == ["shards/shard-001.yaml"]
    docs = kustomize(overlay)
    assert check_coordinator(docs, params.namespace) == []
    assert set(render_overlay(params, overlay)) == {
        p.relative_to(overlay).as_posix() for p in overlay.rglob("*") if p.is_file()}


def _params(**changes: object) -> OverlayParams:
    base = load_params(OVERLAYS / "prod" / "overlay.toml")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_memory_follows_the_index_size() -> None:
    # memory = base + index_bytes x overhead, in whole Mi, rounded up (one worker).
    p = _params(index_bytes="10Gi", memory_overhead=2.0, memory_base="512Mi", shard_cpu="1")
    assert p.shard_memory == f"{512 + 20 * 1024}Mi"
    assert _params(index_bytes="1000M", memory_overhead=1.2, memory_base="0",
                   shard_cpu="500m").shard_memory == \
        f"{-(-int(1000 * 1000**2 * 1.2) // MI)}Mi"
    small, big = _params(index_bytes="1Gi"), _params(index_bytes="100Gi")
    assert big.startup_failure_threshold > small.startup_failure_threshold
    assert parse_bytes(big.shard_scratch) >= 2 * parse_bytes("100Gi")


def test_extra_workers_add_their_own_memory_not_another_index() -> None:
    """--workers = the CPU request rounded up; the index is mapped once, each further worker
    adds worker_memory; the scratch holds a third version's files (mapped until unmapped)."""
    one = _params(index_bytes="10Gi", shard_cpu="1")
    four = _params(index_bytes="10Gi", shard_cpu="3500m", worker_memory="300Mi")
    assert (one.shard_workers, four.shard_workers) == (1, 4)
    assert parse_bytes(four.shard_memory) - parse_bytes(one.shard_memory) == 3 * 300 * MI
    assert parse_bytes(four.shard_scratch) == 3 * 10 * 1024 * MI + 1024 * MI
    assert parse_bytes(one.shard_scratch) == 2 * 10 * 1024 * MI + 1024 * MI


@pytest.mark.parametrize("changes", [
    {"replicas": 1}, {"shard_cpu": "two"}, {"worker_memory": "lots"}, {"shards": 0},
    {"drain_seconds": 5, "resolve_interval": 5},
    {"anti_affinity": "sometimes"}, {"index_bytes": "lots"},
])
def test_bad_parameters_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ParamsError):
        _params(**changes)


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    overlay = _copy_overlay(tmp_path, "dev")
    with (overlay / "overlay.toml").open("a") as f:
        f.write('shard_count = 3\n')
    with pytest.raises(ParamsError, match="shard_count"):
        load_params(overlay / "overlay.toml")
