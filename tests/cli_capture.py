"""Running the real ``cbir`` entry point in-process and reading its one-line error."""

from __future__ import annotations

import pytest

from cbir.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``cbir ARGS``; argparse's refusals included."""
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse refuses the arguments
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
