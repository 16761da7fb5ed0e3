"""The documentation site builds without warnings, and its code is true.

Every Python block of every page runs (see ``doc_blocks.py`` for the
conventions), each page in its own process and temporary directory, and every
``pupsourcing ...`` command shown in a shell block parses with the real
command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from conftest import IN_CI, mysql_admin, unavailable
from doc_blocks import blocks, python_blocks
from pupsourcing.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
CODE_PAGES = [page for page in PAGES if python_blocks(page)]
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}


def page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        if IN_CI:
            pytest.fail("mkdocs is not installed (install the docs group)", pytrace=False)
        pytest.skip("mkdocs is not installed (pip install -e . --group docs)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert warnings == []
    assert (tmp_path / "index.html").exists()
    rendered = [
        name
        for page in (tmp_path / "reference").rglob("*.html")
        for name in re.findall(
            r'id="(pupsourcing\.[\w.]+)" class="doc doc-heading"', page.read_text()
        )
    ]
    assert "pupsourcing.Event.json" in rendered
    internal = [n for n in rendered if set(n.split(".")) & (INTERNAL | {"_"}) or "._" in n]
    assert internal == [], "the API reference shows internals"
    assert ROOT_URL in (tmp_path / "index.html").read_text()  # repo_url: a link to the source


INTERNAL = {"dialect", "dialect_class", "decodes_rows"}
"""Store attributes that are machinery, not API (API.md does not name them)."""
ROOT_URL = "https://github.com/getpup/pupsourcing-python"


MEMBERS_DIRECTIVE = re.compile(
    r"^::: ([\w.]+)\n(?:    .*\n)*?      members: \[([^\]]*)\]", re.MULTILINE
)


def test_reference_pages_name_only_what_exists() -> None:
    """mkdocstrings silently leaves out a listed member that does not exist."""
    listed = 0
    for page in sorted((DOCS / "reference").glob("*.md")):
        for module, members in MEMBERS_DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            imported = importlib.import_module(module)
            for member in (name.strip() for name in members.split(",")):
                assert hasattr(imported, member), f"{page.name}: {module}.{member} does not exist"
                assert member in imported.__all__, f"{page.name}: {module}.{member} is not public"
                listed += 1
    assert listed > 0


def test_reference_pages_document_public_names_only() -> None:
    """A module directive without ``members`` would show every name the module
    defines, public or not; any other directive names a public object."""
    for page in sorted((DOCS / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        listed = {module for module, _ in MEMBERS_DIRECTIVE.findall(text)}
        for target in re.findall(r"^::: ([\w.]+)$", text, re.MULTILINE):
            try:
                module = importlib.import_module(target)
            except ImportError:
                parent, name = target.rsplit(".", 1)
                module = importlib.import_module(parent)
                public = getattr(module, "__all__", None)
                assert not name.startswith("_"), f"{page.name}: {target}"
                assert public is None or name in public, f"{page.name}: {target} is not public"
            else:
                assert target in listed, f"{page.name}: {target} needs a members list"


def test_there_are_pages_with_code() -> None:
    assert len(CODE_PAGES) >= 8


def require_servers(text: str) -> None:
    """Skip (or fail under CI) when a page needs a server that is not reachable."""
    if "import psycopg" in text:
        import psycopg

        try:
            psycopg.connect(
                "host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=5
            ).close()
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
    if "import pymysql" in text:
        mysql_admin().close()
    if "import nats" in text or "pupsourcing.relay import" in text:
        from nats_helpers import nats_reachable

        nats_reachable()


@pytest.mark.parametrize("page", CODE_PAGES, ids=page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    require_servers(page.read_text(encoding="utf-8"))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("doc_blocks.py")), str(page)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def shell_commands(path: Path) -> list[str]:
    """The ``pupsourcing ...`` command lines of a Markdown file's shell blocks."""
    commands = []
    for block in blocks(path.read_text(encoding="utf-8")):
        if block.language not in SHELL_LANGUAGES:
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("pupsourcing "):
                commands.append(line)
    return commands


DOCUMENTED = [
    (path, command)
    for path in [ROOT / "README.md", *PAGES, *sorted((ROOT / "examples").glob("*/README.md"))]
    for command in shell_commands(path)
]


def test_commands_are_documented() -> None:
    assert any("migrate-gen" in command for _, command in DOCUMENTED)


@pytest.mark.parametrize(
    ("path", "command"),
    DOCUMENTED,
    ids=[f"{path.relative_to(ROOT)}:{command}" for path, command in DOCUMENTED],
)
def test_documented_command_parses(path: Path, command: str) -> None:
    args = shlex.split(command, comments=True)[1:]
    if {"-h", "--help", "--version"} & set(args):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(args)
        assert exit_.value.code == 0
    else:
        build_parser().parse_args(args)  # a bad command line raises SystemExit(2)


def test_benchmarks_compare_only_figures_of_one_run() -> None:
    """Every figure on the page was measured by ``bench/run_all.py`` in the same
    run on the same machine; published figures from elsewhere would mislead."""
    page = (DOCS / "benchmarks" / "index.md").read_text(encoding="utf-8")
    headers = [line for line in page.splitlines() if line.startswith("| db | key |")]
    assert headers  # the main table, and the 10M run's when it was measured
    for header in headers:
        assert header == "| db | key | workload | figure | baseline | ratio | target |  |"
    assert "Go original" not in page
    assert "Go original" not in (ROOT / "bench" / "run_all.py").read_text(encoding="utf-8")


def test_projections_page_opens_with_the_idea_not_its_set_up() -> None:
    """The set-up code folds away (a collapsed admonition) yet still runs: it
    is the page's first Python block, which ``test_page_code_runs`` executes."""
    page = DOCS / "projections.md"
    opening = page.read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert "\n```" not in opening  # no code at the top level before the first section
    assert '\n??? note "Set-up' in opening  # ??? renders collapsed
    assert "CREATE SCHEMA" in python_blocks(page)[0].code


def test_long_code_lines_wrap() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    [css] = re.findall(r"^extra_css:\n  - (\S+)$", config, re.MULTILINE)
    assert "white-space: pre-wrap" in (DOCS / css).read_text(encoding="utf-8")
    assert f"repo_url: {ROOT_URL}\n" in config
    assert "edit_uri: edit/main/docs/\n" in config


# -- links between pages ------------------------------------------------------------

LINKED_PAGES = [ROOT / "README.md", ROOT / "examples" / "README.md", *PAGES]
"""The pages whose links must resolve. MkDocs checks the site's own pages only
when it is installed; the README (PyPI's page) and the examples' index are not
part of the site at all."""

LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def slug(heading: str) -> str:
    """The id Python-Markdown's ``toc`` extension gives a heading (its default
    ``slugify``, after the inline markup is rendered to text)."""
    text = re.sub(r"\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])", r"\1", heading)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set(re.findall(r'\bid="([^"]+)"', text))
    counts: dict[str, int] = {}
    for match in HEADING.finditer(text):
        heading = match.group(1)
        explicit = re.search(r"\{[^}]*#([\w-]+)[^}]*\}\s*$", heading)
        if explicit:
            found.add(explicit.group(1))
            continue
        base = slug(heading)
        counts[base] = counts.get(base, -1) + 1
        found.add(base if counts[base] == 0 else f"{base}_{counts[base]}")
    return found


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold no links
    return [a or b for a, b in LINK.findall(text)]


def test_slug_is_python_markdowns() -> None:
    assert slug("Failure policy: retries and dead letters") == (
        "failure-policy-retries-and-dead-letters"
    )
    assert slug("Handling `OptimisticConcurrencyError`") == "handling-optimisticconcurrencyerror"
    assert slug("Gap safety: the safe horizon") == "gap-safety-the-safe-horizon"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path) -> None:
    """Every link to a file of the repository (relative, or to its ``blob/main``
    on GitHub, as the README writes them for PyPI) names a file that exists,
    and every ``#anchor`` in it a heading of that page."""
    broken = []
    for url in links(page):
        if url.startswith(f"{ROOT_URL}/blob/main/"):
            url = str(ROOT / url.removeprefix(f"{ROOT_URL}/blob/main/"))
        elif re.match(r"[a-z][a-z0-9+.-]*:", url):
            continue  # another site, mailto:, ...
        path, _, anchor = url.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{url}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{url}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert broken == [], page.relative_to(ROOT).as_posix()
