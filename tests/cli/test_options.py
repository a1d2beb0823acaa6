"""cbir.options: flags generated from config fields, CBIR_* environment values, validation by
the parser, and configs built back from the parsed namespace."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from cbir.options import DefaultsHelpFormatter, add_options, build, nested, option, options_of


@dataclass(frozen=True)
class Inner:
    window_s: float = option(0.002, flag="--window-ms", scale=0.001, non_negative=True,
                             help="extra wait")
    enabled: bool = option(True, flag="--no-batching", help="one call per query")
    untouched: int = 7  # not an option: keeps its value


@dataclass(frozen=True)
class Outer:
    shard: int = option(required=True, non_negative=True, help="which shard")
    index: str | None = option(None, mutex="where", required=True, help="index root")
    pointer: str | None = option(None, flag="--index-pointer", mutex="where", required=True,
                                 help="pointer object")
    port: int = option(50051, non_negative=True, help="0 = any free port")
    interval_s: float = option(10.0, flag="--interval", positive=True, help="seconds")
    policy: str = option("p2c", choices=("p2c", "round-robin"), help="replica choice")
    debug: bool = option(False, help="more output")
    inner: Inner = nested(Inner)
    secret: str = "not an option"


def parser_for(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", formatter_class=DefaultsHelpFormatter)
    add_options(parser, Outer, env=env or {})
    return parser


def parse(argv: list[str], env: dict[str, str] | None = None) -> Outer:
    result = build(Outer, parser_for(env).parse_args(argv))
    assert isinstance(result, Outer)
    return result


def test_flags_and_defaults_come_from_the_fields() -> None:
    cfg = parse(["--shard", "3", "--index", "/i"])
    assert cfg == Outer(shard=3, index="/i")
    assert cfg.inner == Inner() and cfg.inner.window_s == pytest.approx(0.002)
    flags = {o.flag: o for o in options_of(Outer)}
    assert set(flags) == {"--shard", "--index", "--index-pointer", "--port", "--interval",
                          "--policy", "--debug", "--window-ms", "--no-batching"}
    assert flags["--window-ms"].to_flag(0.002) == pytest.approx(2.0)
    assert flags["--port"].env == "CBIR_PORT"


def test_flags_reach_nested_fields_with_units_and_negation() -> None:
    cfg = parse(["--shard", "1", "--index-pointer", "s3://b/CURRENT", "--window-ms", "5",
                 "--no-batching", "--debug", "--policy", "round-robin", "--port", "0"])
    assert (cfg.pointer, cfg.index, cfg.debug, cfg.policy, cfg.port) == (
        "s3://b/CURRENT", None, True, "round-robin", 0)
    assert cfg.inner.window_s == pytest.approx(0.005)
    assert cfg.inner.enabled is False and cfg.inner.untouched == 7


@pytest.mark.parametrize(("argv", "message"), [
    (["--shard", "-1", "--index", "i"], "argument --shard: must be >= 0, got -1"),
    (["--shard", "x", "--index", "i"], "argument --shard: expected an integer, got 'x'"),
    (["--shard", "0", "--index", "i", "--interval", "0"], "argument --interval: must be > 0"),
    (["--shard", "0", "--index", "i", "--policy", "random"], "invalid choice: 'random'"),
    (["--index", "i"], "the following arguments are required: --shard"),
    (["--shard", "0"], "one of the arguments --index --index-pointer is required"),
    (["--shard", "0", "--index", "i", "--index-pointer", "p"], "not allowed with argument"),
])
def test_bad_values_exit_2_with_one_line(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser_for().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_environment_is_read_and_the_flag_wins() -> None:
    env = {"CBIR_SHARD": "4", "CBIR_INDEX": "/env-index", "CBIR_PORT": "6000",
           "CBIR_WINDOW_MS": "7", "CBIR_NO_BATCHING": "true", "CBIR_POLICY": "round-robin"}
    cfg = parse([], env)  # --shard and the where-group are satisfied by the environment
    assert (cfg.shard, cfg.index, cfg.port, cfg.policy) == (4, "/env-index", 6000, "round-robin")
    assert cfg.inner.window_s == pytest.approx(0.007) and cfg.inner.enabled is False
    cfg = parse(["--port", "7000", "--shard", "5"], env)
    assert (cfg.port, cfg.shard) == (7000, 5)
    # A flag of the mutex group beats another member's environment value.
    cfg = parse(["--index-pointer", "s3://b/P"], env)
    assert (cfg.pointer, cfg.index) == ("s3://b/P", None)


@pytest.mark.parametrize(("env", "message"), [
    ({"CBIR_PORT": "-3"}, "CBIR_PORT='-3': must be >= 0"),
    ({"CBIR_INTERVAL": "soon"}, "CBIR_INTERVAL='soon': expected a number"),
    ({"CBIR_DEBUG": "maybe"}, "CBIR_DEBUG='maybe': expected true or false"),
    ({"CBIR_POLICY": "random"}, "CBIR_POLICY='random': choose from p2c, round-robin"),
])
def test_bad_environment_values_exit_2(env: dict[str, str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser_for(env)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_shows_defaults_and_env_names() -> None:
    text = " ".join(parser_for().format_help().split())
    assert "0 = any free port (env CBIR_PORT) (default: 50051)" in text
    assert "extra wait (env CBIR_WINDOW_MS) (default: 2.0)" in text
    assert "more output (env CBIR_DEBUG)" in text and "(default: False)" not in text


def test_an_alias_sets_the_same_field_and_query_takes_dash_k() -> None:
    from cbir.query_cli import QueryOptions, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    short = build(QueryOptions, parser.parse_args(["-k", "7", "--coordinator", "h:1", "q.jpg"]))
    long = build(QueryOptions, parser.parse_args(["--k", "7", "--coordinator", "h:1", "q.jpg"]))
    assert short.k == long.k == 7
