"""The suite's guard for drivers: a missing one skips locally, fails under CI.

Each case runs a small test module in a fresh ``pytest`` process with the
driver hidden (``sys.modules[name] = None``, as if not installed), once with
``CI=true`` and once without, and reads the outcome from its summary.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import conftest
from conftest import EXTRAS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

PRELUDE = f"""
import importlib.util
import sys

sys.modules["psycopg"] = None  # a driver that is not installed
_spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = sys.modules["suite_conftest"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite)
"""

AT_TOP_LEVEL = (
    PRELUDE
    + """
psycopg = suite.require("psycopg")


def test_uses_the_driver():
    assert psycopg.connect
"""
)

IN_A_TEST = (
    PRELUDE
    + """

def test_uses_the_driver():
    suite.require("psycopg")


def test_without_the_driver():
    assert suite.require("json").dumps(1) == "1"
"""
)

HINT = "psycopg not installed (pip install -e '.[postgres]')"


def run_module(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_guarded.py").write_text(source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["CI"] = "true" if ci else ""
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *sys.path])
    command = [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist"]
    command += ["--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_guarded.py")]
    return subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counts of the final summary line, by outcome."""
    last = result.stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}


def test_a_missing_driver_skips_a_test_locally_with_the_extra_to_install(tmp_path: Path) -> None:
    result = run_module(tmp_path, IN_A_TEST, ci=False)
    assert outcome(result) == {"passed": 1, "skipped": 1}, result.stdout
    assert HINT in result.stdout


def test_a_missing_driver_fails_a_test_under_ci(tmp_path: Path) -> None:
    result = run_module(tmp_path, IN_A_TEST, ci=True)
    assert result.returncode == 1, result.stdout
    assert outcome(result) == {"failed": 1, "passed": 1}, result.stdout
    assert f"{HINT} (CI=true" in result.stdout


def test_a_missing_driver_skips_a_whole_module_locally(tmp_path: Path) -> None:
    result = run_module(tmp_path, AT_TOP_LEVEL, ci=False)
    assert outcome(result) == {"skipped": 1}, result.stdout
    assert HINT in result.stdout


def test_a_missing_driver_fails_a_whole_module_under_ci(tmp_path: Path) -> None:
    result = run_module(tmp_path, AT_TOP_LEVEL, ci=True)
    assert result.returncode != 0, result.stdout
    assert outcome(result) == {"error": 1}, result.stdout
    assert HINT in result.stdout


def test_a_broken_driver_is_told_apart_from_a_missing_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An installed driver that fails to import (a missing shared library,
    say) is not reported as "not installed"."""
    monkeypatch.setattr(conftest, "IN_CI", False)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(pytest.skip.Exception, match=re.escape(HINT)):
        conftest.require("psycopg")
    (tmp_path / "broken_driver_q7.py").write_text(
        "raise ImportError('libbroken.so.1: cannot open shared object file')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="cannot be imported: libbroken"):
        conftest.require("broken_driver_q7")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"{HINT} (CI=true")):
        conftest.require("psycopg")


def test_every_extra_in_the_table_exists_and_dev_installs_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    dev = " ".join(str(item) for item in pyproject["dependency-groups"]["dev"])
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module}: no extra {extra!r} in pyproject.toml"
        # mysqlclient needs C headers: CI installs it beside dev (.ci/run).
        assert extra in dev or extra == "mysqlclient", f"dev does not install {extra}"


def test_no_test_module_skips_on_its_own_for_a_missing_module() -> None:
    """``pytest.importorskip`` would skip even under CI: modules use ``require``."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "importorskip":
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


# -- parallel workers ----------------------------------------------------------


def test_auto_runs_three_workers_per_cpu_and_at_most_eight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    for cpus, workers in ((1, 3), (2, 6), (3, 8), (4, 8), (16, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert conftest.pytest_xdist_auto_num_workers(None) == workers  # type: ignore[arg-type]
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert conftest.pytest_xdist_auto_num_workers(None) == 3  # type: ignore[arg-type]


def test_each_worker_has_databases_of_its_own(make_store_backend: Any) -> None:
    """Under xdist, stores live in the worker's ``test_gwN`` databases, which
    subprocesses find through $PUPSOURCING_TEST_PG; serially in ``test``."""
    expected = f"test_{conftest.WORKER}" if conftest.WORKER else "test"
    databases = conftest.PG_DATABASE, conftest.MYSQL_DATABASE
    assert databases == (expected, expected)
    backend = make_store_backend("postgres")
    assert backend.scalar("SELECT current_database()") == expected
    assert f"/{expected}?" in backend.url
    if conftest.WORKER:
        assert os.environ["PUPSOURCING_TEST_PG"].endswith(f"dbname={expected}")
    admin = conftest.mysql_admin()
    try:
        cursor = admin.cursor()
        cursor.execute("SHOW DATABASES LIKE %s", (expected,))
        assert cursor.fetchall() == ((expected,),)
    finally:
        admin.close()
