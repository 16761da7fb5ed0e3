"""Helpers shared by the eventmap-gen tests."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pupsourcing.eventmap import generate_mapping

REPO = Path(__file__).resolve().parents[2]
KITCHEN_SINK = Path(__file__).resolve().parent / "kitchen_sink"
EXAMPLE = REPO / "examples" / "eventmap_codegen"


def run(args: list[str], cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command with this interpreter's import path (so ``pupsourcing`` resolves)."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "pupsourcing", *args], cwd=cwd)


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


@dataclasses.dataclass
class Workspace:
    """A directory on ``sys.path`` where tests create event packages and import mappings."""

    root: Path
    modules: list[str] = dataclasses.field(default_factory=list)

    def package(self, files: dict[str, str], name: str | None = None) -> Path:
        """Write an input package (``__init__.py`` included) and return its directory."""
        name = name or f"evpkg_{uuid.uuid4().hex[:10]}"
        self.modules.append(name)
        write_files(self.root / name, {"__init__.py": "", **files})
        return self.root / name

    def mapping(self, input_dir: Path, **kwargs: Any) -> ModuleType:
        """Generate the mapping of ``input_dir`` and import it."""
        name = f"mapping_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(
            generate_mapping(input_dir, **kwargs), encoding="utf-8"
        )
        self.modules.append(name)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def cleanup(self) -> None:
        for module in list(sys.modules):
            if module.split(".")[0] in self.modules:
                del sys.modules[module]


def open_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """The body of a ``workspace`` fixture (each test module declares its own)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    ws = Workspace(tmp_path)
    yield ws
    ws.cleanup()


def assert_same(actual: object, expected: object, path: str = "value") -> None:
    """Equal, and of exactly the same types all the way down (an exact round trip).

    Stricter than ``==``: ``1 == 1.0``, ``[1] != (1,)`` but ``Decimal("1.0") ==
    Decimal("1.00")``, and two datetimes at the same instant in different
    offsets compare equal.
    """
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        for f in dataclasses.fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), f"{path}.{f.name}")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple)
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{index}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), f"{path}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, Decimal):
        assert isinstance(actual, Decimal)
        assert actual.as_tuple() == expected.as_tuple(), f"{path}: {actual!r} != {expected!r}"
    elif isinstance(expected, datetime):
        assert isinstance(actual, datetime)
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        assert actual.utcoffset() == expected.utcoffset(), f"{path}: offset differs"
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None)
    elif isinstance(expected, float):
        assert repr(actual) == repr(expected), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
