"""Packaging promises: a stdlib-only core, typed, importable without drivers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import pupsourcing
from helpers import without_modules

PACKAGE = Path(pupsourcing.__file__).parent


def test_py_typed_marker() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_core_imports_only_the_standard_library() -> None:
    code = """
import sys
before = set(sys.modules)
import pupsourcing, pupsourcing.store, pupsourcing.migrations, pupsourcing.cli
import pupsourcing.adapters.sqlite, pupsourcing.adapters.postgres, pupsourcing.adapters.mysql
import pupsourcing.aio, pupsourcing.runner
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
foreign = sorted(loaded - set(sys.stdlib_module_names) - {"pupsourcing"})
print(",".join(foreign))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"non-stdlib imports: {result.stdout}"


def test_the_asyncio_api_is_importable_from_one_place() -> None:
    from pupsourcing import aio
    from pupsourcing.runner import ProjectionRunner

    for name in (
        "AsyncPostgresStore",
        "AsyncMySQLStore",
        "AsyncSQLiteStore",
        "AsyncProcessor",
        "AsyncRunner",
        "ProjectionRunner",
    ):
        assert name in aio.__all__
        assert hasattr(aio, name)
    assert aio.ProjectionRunner is ProjectionRunner
    assert aio.AsyncPostgresStore().config == aio.AsyncSQLiteStore().config


def test_public_names() -> None:
    for name in (
        "Event",
        "PersistedEvent",
        "Stream",
        "AppendResult",
        "ExpectedVersion",
        "PupsourcingError",
        "OptimisticConcurrencyError",
        "NoEventsError",
        "InvalidEventError",
        "ProjectionError",
    ):
        assert hasattr(pupsourcing, name)
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.adapters.sqlite import SQLiteStore
    from pupsourcing.store import StoreConfig

    assert StoreConfig().events_table == "events"
    assert StoreConfig().checkpoints_table == "projection_checkpoints"
    assert StoreConfig().aggregate_heads_table == "aggregate_heads"
    assert SQLiteStore().config == StoreConfig()
    assert PostgresStore(StoreConfig(events_table="e")).config.events_table == "e"


# --- pyproject.toml: what PyPI shows and what an install pulls in -----------

ROOT = Path(__file__).resolve().parent.parent
REPO = "https://github.com/getpup/pupsourcing-python"


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def names(requirements: list[Any]) -> list[str]:
    """The distribution names of requirement strings (group includes skipped)."""
    return [
        re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower()
        for r in requirements
        if isinstance(r, str)
    ]


def test_project_urls_point_at_the_repository() -> None:
    urls = pyproject()["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Source", "Changelog", "Issues"}
    for url in urls.values():
        assert url.startswith(REPO), url
    assert urls["Changelog"].endswith("/CHANGELOG.md")
    assert (ROOT / "CHANGELOG.md").is_file()


def test_classifiers_name_every_supported_python() -> None:
    project = pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    versions = {
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == {"3.11", "3.12", "3.13"}
    assert "Typing :: Typed" in project["classifiers"]


def test_extras_are_drivers_only() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    # psycopg's advice for libraries: depend on plain psycopg, let the
    # application choose how libpq comes; the binary build is one extra away.
    assert extras["postgres"] == ["psycopg>=3.1"]
    assert extras["postgres-binary"] == ["psycopg[binary]>=3.1"]
    assert not {"dev", "docs", "bench", "test"} & set(extras)
    published = [name for requirements in extras.values() for name in names(requirements)]
    assert "psycopg-pool" not in published  # pupsourcing never imports it
    sources = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    assert not re.search(r"^\s*(import|from) psycopg_pool\b", sources, re.MULTILINE)
    assert not {"pytest", "mypy", "ruff", "hypothesis", "mkdocs-material"} & set(published)


def test_development_tools_are_dependency_groups() -> None:
    groups = pyproject()["dependency-groups"]
    assert {"dev", "docs", "bench"} <= set(groups)
    dev = groups["dev"]
    assert {"include-group": "docs"} in dev
    assert {"include-group": "bench"} in dev
    assert {"pytest", "mypy", "ruff", "hypothesis", "pupsourcing"} <= set(names(dev))
    assert "mkdocs-material" in names(groups["docs"])
    assert "matplotlib" in names(groups["bench"])
    # Developers test the binary build: no libpq needed on their machine.
    [own] = [r for r in dev if isinstance(r, str) and r.startswith("pupsourcing[")]
    assert "postgres-binary" in own
    assert "[postgres]" not in own
    # psycopg-pool is there because the tests and an example use it.
    assert "psycopg-pool" in names(dev)
    users = [*(ROOT / "tests").glob("*.py"), *(ROOT / "examples").rglob("*.py")]
    assert any("psycopg_pool" in p.read_text(encoding="utf-8") for p in users)


def test_one_command_installs_for_development() -> None:
    command = "pip install -e . --group dev"
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --quiet -e '.[mysqlclient]' --group dev" in ci
    assert ".[dev" not in ci


def test_readme_links_work_on_pypi() -> None:
    """PyPI shows the README without the repository: relative links break."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets
    relative = [t for t in targets if not re.match(r"https://|#", t)]
    assert relative == []
    for target in targets:
        if target.startswith(f"{REPO}/blob/main/"):
            path = ROOT / target.removeprefix(f"{REPO}/blob/main/").split("#")[0]
            assert path.exists(), target


@pytest.mark.parametrize(
    ("module", "feature", "extra", "use"),
    [
        ("prometheus_client", "pupsourcing.metrics", "metrics", "import pupsourcing.metrics"),
        ("opentelemetry", "pupsourcing.tracing", "otel", "import pupsourcing.tracing"),
        ("starlette", "pupsourcing.console", "ui", "import pupsourcing.console"),
        (  # the relay module imports; a relay needs nats-py
            "nats",
            "pupsourcing.relay.NatsRelay",
            "nats",
            "import pupsourcing.relay as r, pupsourcing.aio as a; "
            "r.NatsRelay(None, a.AsyncSQLiteStore(), stream='S')",
        ),
    ],
)
def test_a_module_whose_extra_is_missing_names_the_extra(
    module: str, feature: str, extra: str, use: str, tmp_path: Path
) -> None:
    code = f"""
try:
    {use}
except ModuleNotFoundError as exc:
    print(exc.name)
    print(exc)
"""
    env = {**os.environ, **without_modules(tmp_path, module)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    name, message = result.stdout.splitlines()
    assert name == module  # still the missing module's name, as Python gives it
    assert message.startswith(f"{feature} needs the {extra} extra ({module}"), message
    assert message.endswith(f"pip install 'pupsourcing[{extra}]'"), message


@pytest.mark.parametrize(
    ("module", "args", "fragments"),
    [
        (
            "prometheus_client",
            ("projections", "run", "cli_projections:Recorder", "--metrics-port", "0"),
            ("--metrics-port needs prometheus-client", "[metrics]"),
        ),
        ("starlette", ("ui",), ("the console needs the ui extra (starlette", "[ui]")),
        ("uvicorn", ("ui",), ("the console needs the ui extra (uvicorn", "[ui]")),
        (
            "nats",
            ("relay", "nats", "--nats", "nats://127.0.0.1:4222", "--stream", "S"),
            ("relay nats needs nats-py", "[nats]"),
        ),
    ],
)
def test_a_command_whose_extra_is_missing_says_so_in_one_line(
    module: str, args: tuple[str, ...], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    from cli_helpers import assert_one_line_error, cli_process

    db = tmp_path / "db.sqlite"
    result = cli_process(*args, "--db", f"sqlite:///{db}", **without_modules(tmp_path, module))
    assert_one_line_error(result, *fragments)
    assert not db.exists()  # it stopped before opening the database
