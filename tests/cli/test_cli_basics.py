"""The `cbir` entry point: --version, -v before or after the subcommand, defaults in help."""

from __future__ import annotations

import pytest

import cbir
from cbir.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cbir {cbir.__version__}"


@pytest.mark.parametrize(("argv", "verbose"), [
    (["info", "/x"], 0),
    (["-v", "info", "/x"], 1),
    (["info", "/x", "-v"], 1),
    (["info", "-vv", "/x"], 2),
    (["-v", "info", "/x", "--verbose"], 1),  # the subcommand's count replaces the top-level one
])
def test_verbose_before_or_after_the_subcommand(argv: list[str], verbose: int) -> None:
    assert build_parser(argv).parse_args(argv).verbose == verbose


def test_usage_mistake_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--no-such-flag", "/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cbir: error: unrecognized arguments: --no-such-flag")


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBIR_PORT", raising=False)
    with pytest.raises(SystemExit):
        main(["serve-shard", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = any free port (env CBIR_PORT) (default: 50051)" in text
    assert "(default: 120.0)" in text  # --keep-previous-seconds: the config's one default
