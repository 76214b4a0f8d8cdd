"""The documentation against the repository and the CLI: README.md, CHANGELOG.md and docs/*.md.

* every relative link and image (markdown ``[..](path)``, ``![..](path)``, HTML ``src``/``href``)
  names an existing file, and an anchor after ``#`` names a heading of that file;
* every option written after ``mambapro <command>`` (in code blocks and inline code, and inline
  code that starts with a command name) exists in that command's parser, and a bare inline
  ``--option`` exists in some command;
* README.md stays a five-minute read (at most 250 lines) and keeps the two command blocks that
  ``.ci/run`` extracts;
* no page refers to documents outside the repository (engineering spec, its sections, issue
  numbers);
* every docs page is reachable from docs/index.md.

The checkers are plain functions, each with a test on a small made-up input showing that it can
fail.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

#: Words that point outside the repository: the engineering spec, its sections, issue numbers,
#: the background notes.
FORBIDDEN = [
    ("SPEC", re.compile(r"SPEC")),
    ("§", re.compile(r"§")),
    ("issue N", re.compile(r"issue\s*#?\d", re.IGNORECASE)),
    ("FIELD-NOTES", re.compile(r"FIELD-NOTES", re.IGNORECASE)),
    ("shared/paper", re.compile(r"shared/paper")),
]

#: Tokens that end one shell command.
_COMMAND_END = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&"}


def doc_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- markdown parsing


_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"(`+)(.+?)\1")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def split_markdown(text: str) -> tuple[list[str], list[str], list[str]]:
    """``(paragraphs, code_blocks, inline_spans)``: prose paragraphs (their lines joined, inline
    code replaced by ``code``), the fenced blocks' contents and the inline code spans."""
    paragraphs: list[str] = []
    blocks: list[str] = []
    spans: list[str] = []
    current: list[str] = []
    fence: str | None = None
    block: list[str] = []

    def flush() -> None:
        if current:
            joined = " ".join(line.strip() for line in current)
            spans.extend(m.group(2).strip() for m in _INLINE.finditer(joined))
            paragraphs.append(_INLINE.sub("code", joined))
            current.clear()

    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1) == fence:
                blocks.append("\n".join(block))
                block, fence = [], None
            else:
                block.append(line)
        elif m:
            flush()
            fence = m.group(1)
        elif not line.strip():
            flush()
        else:
            current.append(line)
    flush()
    if fence is not None:
        blocks.append("\n".join(block))
    return paragraphs, blocks, spans


def headings(text: str) -> list[str]:
    out = []
    fence = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None and (h := _HEADING.match(line)):
            out.append(h.group(2))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, links and code marks reduced to their text,
    punctuation dropped, spaces to hyphens."""
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    s = s.replace("`", "").strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(text):
        base = slug(h)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"\b(?:src|href)=\"([^\"]+)\"")


def links(text: str) -> list[str]:
    paragraphs, _, _ = split_markdown(text)
    out: list[str] = []
    for p in paragraphs:
        out += _LINK.findall(p)
        out += _HTML_LINK.findall(p)
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file does not exist, or whose anchor is not a
    heading of that file."""
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading '#{anchor}' in {_rel(dest)}")
    return bad


# ----------------------------------------------------------------------------- CLI options


def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level options and, per command, the option strings of the real parser."""
    from mambapro.cli import build_parser

    parser = build_parser()
    top: set[str] = set()
    subs: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subs[name] = {s for a in sub._actions for s in a.option_strings}
        else:
            top.update(action.option_strings)
    return top, subs


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False)
    except ValueError:  # an unbalanced quote in prose-like code: whitespace is good enough
        return text.split()


def _option(token: str) -> str | None:
    """The option a token spells (``[--kind`` -> ``--kind``, ``--set=..`` -> ``--set``), or None."""
    token = token.strip("[](){}'\",;:")
    token = token.split("=", 1)[0]
    return token if re.fullmatch(r"--?[A-Za-z][\w-]*", token) else None


def command_uses(text: str, commands: set[str]) -> list[tuple[str | None, list[str]]]:
    """Each ``mambapro [COMMAND] options...`` written in ``text`` (lines ending in ``\\`` joined):
    ``(command or None for the top level, [options])``; an unknown command is returned as is."""
    uses: list[tuple[str | None, list[str]]] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # shell comments
        toks = _tokens(line)
        i = 0
        while i < len(toks):
            tok = toks[i]
            starts = tok == "mambapro" or (tok == "mambapro.cli" and i > 0 and toks[i - 1] == "-m")
            if not starts:
                i += 1
                continue
            i += 1
            command: str | None = None
            if i < len(toks) and not toks[i].startswith("-"):
                command = toks[i]
                i += 1
            opts = []
            while i < len(toks) and toks[i] not in _COMMAND_END | {"mambapro", "mambapro.cli"}:
                if (opt := _option(toks[i])) is not None:
                    opts.append(opt)
                i += 1
            uses.append((command, opts))
    return uses


def _inline_uses(span: str, commands: set[str]) -> list[tuple[str | None, list[str]]]:
    """Inline code: ``mambapro ...`` anywhere, or a span that starts with a command name and
    names an option (``test --missing all``)."""
    uses = command_uses(span, commands)
    if uses:
        return uses
    toks = _tokens(span)
    if toks and toks[0] in commands and any(_option(t) for t in toks[1:]):
        return command_uses("mambapro " + span, commands)
    return []


def unknown_options(text: str, top: set[str], subs: dict[str, set[str]]) -> list[str]:
    """Every ``mambapro COMMAND --option`` of ``text`` whose command or option the parser lacks,
    and every bare inline ``--option`` that no command has."""
    commands = set(subs)
    _, blocks, spans = split_markdown(text)
    uses = [u for b in blocks for u in command_uses(b, commands)]
    uses += [u for s in spans for u in _inline_uses(s, commands)]
    bad = []
    for command, opts in uses:
        if command is None:
            known = top
        elif command not in subs:
            bad.append(f"mambapro {command}: no such command")
            continue
        else:
            known = subs[command]
        bad += [f"mambapro {command or ''} {o}".replace("  ", " ") for o in opts if o not in known]
    every = top.union(*subs.values())
    for s in spans:
        toks = _tokens(s)
        if toks and toks[0].startswith("--") and (opt := _option(toks[0])) and opt not in every:
            bad.append(f"`{s}`: no command has {opt}")
    return sorted(set(bad))


# ----------------------------------------------------------------------------- other rules


def forbidden_words(text: str) -> list[str]:
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN:
            if pattern.search(line):
                bad.append(f"line {n}: {what}: {line.strip()[:100]}")
    return bad


def ci_block(text: str, marker: str) -> str | None:
    """The command block after ``<!-- ci:MARKER -->``, read as ``.ci/run`` reads it."""
    lines = text.splitlines()
    try:
        start = lines.index(f"<!-- ci:{marker} -->")
    except ValueError:
        return None
    body: list[str] = []
    inside = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            if inside:
                return "\n".join(body)
            inside = True
            continue
        if inside:
            body.append(line)
    return None


# ----------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("path", doc_files(), ids=_rel)
def test_relative_links_resolve(path: Path) -> None:
    assert not broken_links(path), broken_links(path)


@pytest.mark.parametrize("path", doc_files(), ids=_rel)
def test_documented_cli_options_exist(path: Path) -> None:
    top, subs = cli_options()
    bad = unknown_options(path.read_text(encoding="utf-8"), top, subs)
    assert not bad, bad


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("path", doc_files(), ids=_rel)
def test_no_reference_outside_the_repository(path: Path) -> None:
    bad = forbidden_words(path.read_text(encoding="utf-8"))
    assert not bad, bad


def test_readme_keeps_the_ci_blocks() -> None:
    text = README.read_text(encoding="utf-8")
    install = ci_block(text, "install-and-demo")
    tests = ci_block(text, "test")
    assert install and "pip install" in install and "mambapro demo" in install, install
    assert tests and "pytest" in tests, tests


def test_every_docs_page_is_reachable() -> None:
    index = DOCS / "index.md"
    readme_targets = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text()) if t}
    assert index.resolve() in readme_targets, "README.md does not link docs/index.md"
    targets = {(DOCS / t.partition("#")[0]).resolve() for t in links(index.read_text()) if t}
    missing = [p.name for p in DOCS.glob("*.md") if p != index and p.resolve() not in targets]
    assert not missing, f"docs/index.md does not link {missing}"


# ----------------------------------------------------------------------------- the checkers can fail


def test_link_checker_flags_missing_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A title\n\n## Second `part`\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](there.md) [ok](there.md#a-title) [ok](there.md#second-part) ![ok](pic.png) [ok](#page)\n"
        '<img src="pic.png"> [web](https://example.org/x.md)\n\n'
        "[gone](missing.md) ![gone](img/none.png) [bad](there.md#nope) [bad](#nothing)\n"
        '<img src="absent.png">\n\n'
        "```\n[not a link](in-code.md)\n```\n"
    )
    assert sorted(broken_links(page)) == sorted(
        [
            "missing.md: no such file",
            "img/none.png: no such file",
            "there.md#nope: no heading '#nope' in " + _rel(tmp_path / "there.md"),
            "#nothing: no heading '#nothing' in " + _rel(page),
            "absent.png: no such file",
        ]
    )


def test_option_checker_flags_unknown_commands_and_options() -> None:
    top = {"--help", "--version"}
    subs = {"train": {"--output", "-o", "--resume"}, "index": {"--out", "--kind"}, "test": {"--missing"}}
    text = (
        "Run `mambapro train --output runs/x --resum` or `test --missing all --rerank`,\n"
        "`mambapro --version`, `--resume`, `--bogus`.\n\n"
        "```bash\n"
        "pip install x && mambapro train -o runs/y \\\n"
        "    --outptu z   # comment --ignored\n"
        "mambapro index build --out a.index [--kind flat|ivf-pq --nlist N]\n"
        "mambapro trian --output q\n"
        "python -m mambapro.cli test --missing all --bad\n"
        "```\n"
    )
    assert unknown_options(text, top, subs) == sorted(
        [
            "mambapro train --resum",
            "mambapro test --rerank",
            "mambapro train --outptu",
            "mambapro index --nlist",
            "mambapro trian: no such command",
            "mambapro test --bad",
            "`--bogus`: no command has --bogus",
        ]
    )
    # and a clean text passes
    assert unknown_options("`mambapro train --output x` and `--resume`", top, subs) == []


def test_forbidden_words_are_found() -> None:
    found = forbidden_words("as SPEC §3 says\nsee issue 5 and Issue #12\nfine: spec, issues, DatasetSpec")
    assert [f.split(":")[1].strip() for f in found] == ["SPEC", "§", "issue N"]


def test_ci_block_reader_reads_like_ci() -> None:
    text = "x\n<!-- ci:test -->\n\n```bash\n. .venv/bin/activate && python -m pytest -q\n```\n"
    assert ci_block(text, "test") == ". .venv/bin/activate && python -m pytest -q"
    assert ci_block(text, "install-and-demo") is None
