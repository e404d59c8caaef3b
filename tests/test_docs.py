"""The manual: it builds in strict mode, its command-line reference is what the parser says,
every `fedstream` command it shows is one the parser takes, and the how-to blocks marked as
running on one machine run (or name the test that runs them)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md", ROOT / "bench" / "RESULTS.md",
         ROOT / "experiments" / "README.md"]
MARK = re.compile(r"<!-- runs on one machine: (tests/test_docs\.py executes this block|"
                  r"(tests/test_\w+\.py)::(test_\w+) runs it) -->")
BLOCK = re.compile(r"^(?:(<!--[^\n]*-->)\n)?```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL = {"sh", "bash", "shell"}
SEPARATORS = {"&&", "||", ";", "|"}


def blocks(page: Path):
    """(marker or None, language, body) of each fenced block of a page."""
    for match in BLOCK.finditer(page.read_text()):
        marker = MARK.fullmatch(match.group(1) or "")
        yield marker, match.group(2), match.group(3)


def commands(body: str):
    """Each simple command of a shell block as argv, continuation lines joined and comments
    dropped."""
    for line in body.replace("\\\n", " ").splitlines():
        line = re.sub(r"<[\w' -]+>", "PLACEHOLDER", line)  # <hospital-a's token>
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if current:
                    yield current
                current = []
            else:
                current.append(token)
        if current:
            yield current


def fedstream_argv(argv: list[str]) -> list[str] | None:
    """The arguments of a `fedstream` command (after VAR=value assignments), else None."""
    while argv and re.fullmatch(r"\w+=.*", argv[0]):
        argv = argv[1:]
    if argv and (argv[0] == "fedstream" or argv[0].endswith("/fedstream")):
        return argv[1:]
    return None


def shown_commands():
    for page in PAGES:
        for _, language, body in blocks(page):
            if language in SHELL:
                for argv in commands(body):
                    args = fedstream_argv(argv)
                    if args is not None:
                        yield page.relative_to(ROOT).as_posix(), args


def test_every_fedstream_command_shown_is_one_the_parser_takes(capsys):
    from fedstream.cli.main import build_parser
    shown = list(shown_commands())
    assert len(shown) > 30, "the manual's commands were not found"
    parser = build_parser()
    subcommands = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                       and "run" in a.choices).choices
    refused = []
    for page, args in shown:
        try:
            parser.parse_args(args)
        except SystemExit:
            refused.append(f"{page}: fedstream {' '.join(args)}\n  "
                           + capsys.readouterr().err.strip().splitlines()[-1])
            continue
        known = subcommands[args[0]]._option_string_actions
        refused += [f"{page}: fedstream {args[0]} {flag}: not the flag's full name"
                    for flag in (a.split("=")[0] for a in args if a.startswith("--"))
                    if flag not in known]  # argparse would take an abbreviation
    assert not refused, "\n".join(refused)


def test_the_cli_reference_is_regenerated_from_the_parser(tmp_path):
    page = tmp_path / "cli.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--out",
                    str(page)], check=True, env={k: v for k, v in os.environ.items()
                                                 if not k.startswith("FEDSTREAM_")})
    assert page.read_text() == (DOCS / "reference" / "cli.md").read_text(), \
        "docs/reference/cli.md is stale: run `python scripts/cli_reference.py` and commit"


def test_the_manual_builds_in_strict_mode(tmp_path):
    """Broken links, missing anchors, pages outside the navigation and unresolved API
    references fail the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    built = tmp_path / "site"
    assert "WorkerLoop" in (built / "reference" / "api" / "index.html").read_text()
    assert (built / "experiments" / "results" / "dp.png").exists()
    assert "fedstream secagg-keygen" in (built / "reference" / "cli" / "index.html").read_text()


def marked(kind: str):
    for page in PAGES:
        for marker, language, body in blocks(page):
            if marker and (marker.group(2) is None) == (kind == "executed"):
                yield page, marker, language, body


EXECUTED = sorted({page for page, *_ in marked("executed")})


@pytest.mark.parametrize("page", EXECUTED, ids=[p.stem for p in EXECUTED])
def test_a_how_tos_blocks_run_as_shown(page, tmp_path):
    """The page's marked blocks, in order, in one empty folder, as a user pastes them into
    bash; `fedstream run` and `simulate` get `--rounds 2` appended (the last flag wins) so
    the suite stays fast: their flags, data and set-up are what is checked here, their
    training by the end-to-end tests. A marked TOML block whose first line names a file is
    written to that file."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for where, _marker, language, body in marked("executed"):
        if where != page:
            continue
        if language == "toml":
            name = re.match(r"#\s*(\S+\.toml)", body).group(1)
            (tmp_path / name).write_text(body)
            continue
        script = re.sub(r"^(\s*fedstream (?:run|simulate)\b.*?)(?<!\\)$", r"\1 --rounds 2",
                        body, flags=re.M | re.S)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{page.name}:\n{script}\n{done.stdout[-2000:]}" \
                                     f"{done.stderr[-3000:]}"


def test_the_blocks_run_elsewhere_name_a_test_that_uses_their_flags():
    """A marked block that another test runs names it; that test must exist and its source
    must hold each flag the block's commands use, so the doc and the test move together."""
    linked = list(marked("linked"))
    assert linked
    for page, marker, _language, body in linked:
        test = source_of_test(ROOT / marker.group(2), marker.group(3))
        assert test, f"{page.name} names {marker.group(2)}::{marker.group(3)}, not found"
        for argv in commands(body):
            args = fedstream_argv(argv) or []
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                as_keyword = flag[2:].replace("-", "_") + "="  # a helper's parameter
                assert f'"{flag}"' in test or as_keyword in test, \
                    f"{page.name}: {flag} is not used by {marker.group(3)}"


def source_of_test(path: Path, name: str) -> str | None:
    """A test function's source, its decorators (parameters) included."""
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return "\n".join(source.splitlines()[start - 1:node.end_lineno])
    return None


def test_the_extension_recipes_name_files_and_registries_that_exist():
    """Every repository path in 'Extend fedstream' exists (a `<name>` placeholder's folder),
    and every registry it tells a newcomer to add a line to is where it says."""
    page = (DOCS / "how-to" / "extend.md").read_text()
    paths = set(re.findall(r"`((?:common|coordinator|worker|datapool|proto|tests|docs)/[\w/<>.-]+"
                           r"|pyproject\.toml)`", page))
    assert len(paths) >= 12
    for path in paths:
        target = ROOT / path.split("<")[0] if "<" in path else ROOT / path
        assert target.exists(), path
    sources = {"RULES": "coordinator/fedstream/coordinator/aggregation/__init__.py",
               "CODECS": "common/fedstream/common/codecs.py",
               "BACKENDS": "common/fedstream/common/backend.py",
               "TRANSFORMS": "worker/fedstream/worker/functional_steps.py",
               "LOADERS": "datapool/fedstream/datapool/server.py"}
    for registry, path in sources.items():
        assert f"`{registry}`" in page and re.search(rf"^{registry}\b.*=", (ROOT / path)
                                                      .read_text(), re.M), registry
