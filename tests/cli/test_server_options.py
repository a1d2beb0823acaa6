"""The server CLIs through the real ``cbir`` parser: every flag's default is its config's
default, CBIR_* environment variables are honoured (flag > env > default), and bad values exit
2 with one line before anything starts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cbir.cli import build_parser
from cbir.limits import DEFAULT_LIMITS
from cbir.model_names import MODEL_NAMES
from cbir.options import options_of
from coordinator.cli import build_config
from coordinator.config import BalancerConfig, CoordinatorConfig
from shard_server.batcher import BatchConfig
from shard_server.cli import config_from_args
from shard_server.searcher import SearcherConfig
from shard_server.server import ServerConfig


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def subcommand_actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices[command]._actions if a.option_strings}


@pytest.fixture
def topology(tmp_path: Path) -> str:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"shards": {"0": ["127.0.0.1:1"], "1": ["127.0.0.1:2"]}}))
    return str(path)


@pytest.fixture(autouse=True)
def no_cbir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("CBIR_")]:
        monkeypatch.delenv(name)


def test_shard_flag_defaults_are_the_config_defaults() -> None:
    config = config_from_args(parse(["serve-shard", "--index", "/ix", "--shard", "3"]))
    assert config == ServerConfig(index_uri="/ix", searcher=SearcherConfig(shard=3))
    assert config.searcher.keep_previous_s == 120.0  # the one default (was 0 in code)
    assert config.searcher.batch == BatchConfig()


def test_coordinator_flag_defaults_are_the_config_defaults(topology: str) -> None:
    config = build_config(parse(["serve-coordinator", "--topology", topology]))
    assert config == CoordinatorConfig(num_shards=2, topology_file=topology)
    assert config.balancer == BalancerConfig() and config.limits == DEFAULT_LIMITS


def test_every_generated_flag_shows_its_config_default() -> None:
    for command, classes in (("serve-shard", (ServerConfig,)),
                             ("serve-coordinator", (CoordinatorConfig,))):
        actions = subcommand_actions(command)
        for cls in classes:
            for opt in options_of(cls):
                assert actions[opt.flag].default == opt.to_flag(opt.default), opt.flag


def test_environment_sets_options_and_flags_win(monkeypatch: pytest.MonkeyPatch,
                                               topology: str) -> None:
    monkeypatch.setenv("CBIR_SHARD", "5")
    monkeypatch.setenv("CBIR_INDEX_POINTER", "s3://b/indexes/CURRENT")
    monkeypatch.setenv("CBIR_KEEP_PREVIOUS_SECONDS", "30")
    monkeypatch.setenv("CBIR_BATCH_WINDOW_MS", "2")
    shard = config_from_args(parse(["serve-shard", "--port", "0"]))
    assert (shard.searcher.shard, shard.index_pointer, shard.index_uri) == (
        5, "s3://b/indexes/CURRENT", "")
    assert shard.searcher.keep_previous_s == 30.0
    assert shard.searcher.batch.window_s == pytest.approx(0.002)
    shard = config_from_args(parse(["serve-shard", "--index", "/ix",
                                    "--keep-previous-seconds", "0"]))
    assert (shard.index_uri, shard.index_pointer, shard.searcher.keep_previous_s) == (
        "/ix", None, 0.0)

    monkeypatch.setenv("CBIR_SHARD_DNS", "shard-{shard}.ns:50051")
    monkeypatch.setenv("CBIR_SHARDS", "4")
    monkeypatch.setenv("CBIR_DEADLINE_MS", "2500")
    monkeypatch.setenv("CBIR_BALANCER", "round-robin")
    config = build_config(parse(["serve-coordinator"]))
    assert (config.shard_dns, config.num_shards, config.balancer.policy) == (
        "shard-{shard}.ns:50051", 4, "round-robin")
    assert config.limits.default_deadline_s == 2.5
    config = build_config(parse(["serve-coordinator", "--topology", topology]))
    assert (config.topology_file, config.shard_dns, config.num_shards) == (topology, None, 2)


def test_model_names_match_the_model_registry() -> None:
    from cbir.embedding.models import MODELS
    from coordinator.balancer import BALANCERS

    assert sorted(MODEL_NAMES) == sorted(MODELS)
    policy = next(o for o in options_of(BalancerConfig) if o.flag == "--balancer")
    assert sorted(policy.spec.choices or ()) == sorted(BALANCERS)


def cbir(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("CBIR_")}
    return subprocess.run([sys.executable, "-m", "cbir.cli", *argv], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


@pytest.mark.parametrize(("argv", "env", "line"), [
    (["serve-coordinator", "--shard-dns", "s-{shard}:1", "--shards", "1", "--model", "vgg16"],
     {}, "argument --model: invalid choice: 'vgg16'"),
    (["serve-shard", "--index", "/ix", "--shard", "-1"], {},
     "argument --shard: must be >= 0, got -1"),
    (["serve-shard", "--index", "/ix", "--shard", "0", "--batch-max-rows", "0"], {},
     "argument --batch-max-rows: must be > 0, got 0"),
    (["serve-shard", "--index", "/ix", "--shard", "0"], {"CBIR_PORT": "http"},
     "CBIR_PORT='http': expected an integer"),
    (["serve-coordinator", "--shard-dns", "s-{shard}:1"], {},
     "--shard-dns needs --shards N (N > 0)"),
])
def test_bad_server_options_exit_2_with_one_line(argv: list[str], env: dict[str, str],
                                                 line: str) -> None:
    done = cbir(*argv, env=env)
    assert done.returncode == 2, done.stderr
    assert line in done.stderr and "Traceback" not in done.stderr
