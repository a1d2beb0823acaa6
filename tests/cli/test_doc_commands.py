"""Every ``cbir ...`` command in README.md and docs/*.md goes through the real parser: a concrete
command line must parse as written; a synopsis (``[--flag N]``, ``(A | B)``, ``...``) must name
an existing subcommand and only flags it has. The cheap ones are run for real: ``--help``,
``--version`` and ``cbir info`` (on a small index built here)."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cbir.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYNOPSIS = re.compile(r"[\[\]()|]|\.\.\.|…|<[A-Za-z_]+>")
INLINE = re.compile(r"`(cbir (?:[^`])+)`")
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]+")  # COMMAND, N, URI: a synopsis, not a command line


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # without the leading "cbir "
    inline: bool = False  # a `cbir ...` span in prose: a mention, checked like a synopsis

    @property
    def synopsis(self) -> bool:
        placeholder = any(PLACEHOLDER.fullmatch(w) for w in self.text.split())
        return self.inline or placeholder or bool(SYNOPSIS.search(self.text))


def _code_block_commands(path: Path, lines: list[str]) -> list[DocCommand]:
    found, in_code, i = [], False, 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and re.match(r"^(\$ )?cbir( |$)", line):
            start, text = i, line.removeprefix("$ ")
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            found.append(DocCommand(f"{path.name}:{start + 1}", _strip_comment(text)))
        i += 1
    return found


def _strip_comment(text: str) -> str:
    return text.split(" #", 1)[0].split("  #", 1)[0].strip()


def doc_commands() -> list[DocCommand]:
    found: list[DocCommand] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        found += _code_block_commands(path, lines)
        for n, line in enumerate(lines, 1):
            for match in INLINE.finditer(line.replace("\\|", "|")):
                found.append(DocCommand(f"{path.name}:{n}", match.group(1), inline=True))
    commands = [DocCommand(c.where, c.text.removeprefix("cbir").strip(), c.inline)
                for c in found]
    # A prose span naming no subcommand and no flag ("the cbir library") is not a command.
    return [c for c in commands if not c.inline or "--" in c.text
            or next(iter(c.text.split()), "") in COMMANDS]


COMMANDS_IN_DOCS = doc_commands()


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of ``parser`` and of the subcommands below it."""
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= option_strings(sub)
    return flags


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = sub.choices[name]
    assert isinstance(chosen, argparse.ArgumentParser)
    return chosen


def test_the_docs_have_commands() -> None:
    named = {c.text.split()[0] for c in COMMANDS_IN_DOCS if c.text}
    assert {"backfill", "build-index", "serve-shard", "serve-coordinator", "query", "info",
            "index-pointer"} <= named


@pytest.mark.parametrize("command", COMMANDS_IN_DOCS, ids=lambda c: c.where)
def test_doc_command_parses(command: DocCommand) -> None:
    words = command.text.split()
    while words[:1] and words[0] in ("-v", "-vv", "--verbose"):
        words = words[1:]
    if not words or words[0].startswith("-"):
        top = {"--version", "-v", "--verbose", "-h", "--help"}
        assert set(w for w in words if w.startswith("-")) <= top, command
        return
    name = words[0]
    if PLACEHOLDER.fullmatch(name):  # `cbir COMMAND --help`
        assert set(words[1:]) <= {"--help", "-h"}, command
        return
    assert name in COMMANDS, f"{command.where}: no subcommand {name!r}"
    if command.synopsis:
        flags = {re.sub(r"[\])|,.`]+$", "", w).split("=")[0] for w in words
                 if w.lstrip("[(").startswith("--")}
        known = option_strings(subcommand_parser(name)) | {"--help"}
        unknown = {f.lstrip("[(") for f in flags} - known
        assert not unknown, f"{command.where}: {name} has no {sorted(unknown)}"
        return
    argv = shlex.split(command.text)
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:  # --help / --version exit 0 once parsed
        if exc.code != 0:
            pytest.fail(f"{command.where}: `cbir {command.text}` does not parse ({exc.code})")


def cbir(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cbir.cli", *argv], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False)


def test_cheap_doc_commands_run(tmp_path: Path) -> None:
    """`cbir --version`, every `--help`, and `cbir info` on a small index built here."""
    from tests.shard_server.conftest import build

    index = build(tmp_path, "v1", n=200).root
    ran = 0
    for command in COMMANDS_IN_DOCS:
        argv = shlex.split(command.text) if not command.synopsis else []
        if argv in (["--version"], ["-h"], ["--help"]) or "--help" in argv or "-h" in argv:
            done = cbir(*argv)
        elif argv[:1] == ["info"] and len(argv) >= 2 and not argv[1].startswith("-"):
            done = cbir("info", index, *argv[2:])
        else:
            continue
        assert done.returncode == 0, f"{command.where}: {done.stderr}"
        assert done.stdout.strip(), command.where
        ran += 1
    assert ran >= 3
