"""The documentation stays true: the README is a front page (at most 8 KiB), every relative
link in it and in docs/ reaches an existing file and heading, the README's two quick-start
commands are the ones CI runs, and every Python example compiles."""

from __future__ import annotations

import ast
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from redbreaker import _cli

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_LIMIT = 8192

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (links and headings there are not real)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def _prose_without_code_spans(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _prose(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    text = text.replace("`", "").lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -_"
        or unicodedata.category(ch)[0] in {"L", "N"}
        or unicodedata.category(ch) == "Mn"
    )
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    return _LINK.findall(_prose_without_code_spans(page.read_text(encoding="utf-8")))


def _code_blocks(page: Path, language: str) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def test_readme_is_a_front_page() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to docs/"


def test_docs_pages_exist() -> None:
    names = {page.name for page in DOCS}
    expected = {
        "guide.md",
        "guard.md",
        "consistency.md",
        "outages.md",
        "semantics.md",
        "stores.md",
        "security.md",
        "performance.md",
        "operations.md",
        "consumers.md",
    }
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    """A relative link names an existing file, and its #anchor a heading of that page."""
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(REPO)}")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_link_checker_sees_links_and_anchors() -> None:
    """The checker itself: it finds links (not those in code) and GitHub's anchors."""
    assert _slug("asyncio: `redbreaker.aio`") == "asyncio-redbreakeraio"
    assert _slug("What `retry_after` means") == "what-retry_after-means"
    assert _slug("Web workers: gunicorn, uvicorn") == "web-workers-gunicorn-uvicorn"
    assert _slug("Where the speed comes from, and what it costs") == (
        "where-the-speed-comes-from-and-what-it-costs"
    )
    links = _links(README)
    assert "docs/guide.md" in links
    assert "docs/guide.md#install" in links
    assert len(links) >= 10
    assert "guide.md" in {
        Path(t.partition("#")[0]).name for t in _links(REPO / "docs" / "guard.md")
    }


def _quick_start() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert blocks, "the Quick start has no sh block"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def _ci_commands() -> list[list[str]]:
    """The commands .ci/run runs, split like a shell would (continuations joined)."""
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            try:
                commands.append(shlex.split(stripped))
            except ValueError:
                continue
    return commands


def _extras_closure(extras: set[str]) -> set[str]:
    """``extras`` and every extra they pull in through ``redbreaker[...]``."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    code = "\n".join(line for line in section.splitlines() if not line.lstrip().startswith("#"))
    entries = re.split(r"^([A-Za-z0-9_.-]+) = ", code, flags=re.M)[1:]
    defined = {
        name: set(re.findall(r"redbreaker\[([^\]]+)\]", body))
        for name, body in zip(entries[::2], entries[1::2], strict=True)
    }
    seen, todo = set(), set(extras)
    while todo:
        extra = todo.pop()
        assert extra in defined, f"pyproject.toml defines no extra {extra!r}"
        seen.add(extra)
        for group in defined[extra]:
            todo.update(e.strip() for e in group.split(",") if e.strip() not in seen)
    return seen


def test_quick_start_is_two_commands_that_ci_runs() -> None:
    """Exactly two commands: set up + the demo on the embedded Redis, then the tests; the
    same venv, install and pytest invocation as .ci/run."""
    lines = _quick_start()
    assert len(lines) == 2, lines
    setup = [shlex.split(part) for part in lines[0].split("&&")]
    tests = shlex.split(lines[1])
    ci = _ci_commands()

    venv, install, demo = setup
    assert venv == ["python3", "-m", "venv", ".venv"]
    assert any(c[:4] == venv for c in ci), "CI builds its venv the same way"

    assert install[:3] == [".venv/bin/pip", "install", "-e"]
    extras = set(re.fullmatch(r"\.\[([^\]]+)\]", install[3]).group(1).split(","))  # type: ignore[union-attr]
    ci_installs = [
        c for c in ci if "install" in c and "-e" in c and any(a.startswith(".[") for a in c)
    ]
    assert ci_installs, "CI installs the package with extras"
    ci_extras = set(
        re.fullmatch(r"\.\[([^\]]+)\]", ci_installs[0][ci_installs[0].index("-e") + 1])  # type: ignore[union-attr]
        .group(1)
        .split(",")
    )
    assert _extras_closure(extras) <= _extras_closure(ci_extras), "CI installs at least this"

    assert demo[:3] == [".venv/bin/python", "-m", "redbreaker"]
    parser = (getattr(_cli, "_build_parser", None) or _cli.build_parser)()  # type: ignore[attr-defined]
    args = parser.parse_args(demo[3:])
    assert args.command == "demo"
    assert args.url is None, "the quick start needs no Redis server: the embedded default"
    assert not getattr(args, "forever", False), "the quick start's demo ends by itself"

    assert tests == [".venv/bin/python", "-m", "pytest"]
    assert any(c[-3:] == tests for c in ci), "CI runs the same pytest invocation"


def test_readme_python_examples_compile() -> None:
    blocks = _code_blocks(README, "python")
    assert len(blocks) >= 3  # sync, async, a queue consumer
    for number, block in enumerate(blocks, 1):
        compile(block, f"README.md python block {number}", "exec", dont_inherit=True)


def test_docs_python_examples_compile() -> None:
    """docs/ examples are fragments (top-level ``await`` allowed), but valid Python."""
    for page in DOCS:
        for number, block in enumerate(_code_blocks(page, "python"), 1):
            compile(
                block,
                f"{page.name} python block {number}",
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )


def test_readme_requeue_example_handles_a_missing_retry_after() -> None:
    """retry_after is None while forced open without a deadline: the README never passes it
    on as a delay by itself."""
    text = README.read_text(encoding="utf-8")
    assert "defer_delay(" in text
    assert not re.search(r"delay\s*=\s*\w+\.retry_after", text)
