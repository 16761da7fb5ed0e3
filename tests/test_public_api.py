"""The public surface is what the API reference documents: every name a
public package lists in ``__all__`` is documented (at that path or another
path to the same object), and every documented path resolves. Everything
else is internal (``_``-prefixed modules or names)."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path
from typing import Any

import pytest

from pupsourcing.adapters import _registry as registry

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"

PUBLIC_PACKAGES = [
    "pupsourcing",
    "pupsourcing.store",
    "pupsourcing.projection",
    "pupsourcing.runner",
    "pupsourcing.aio",
    "pupsourcing.relay",
    "pupsourcing.console",
    "pupsourcing.migrations",
    "pupsourcing.eventmap",
    "pupsourcing.domain",
    "pupsourcing.urls",
    "pupsourcing.metrics",
    "pupsourcing.tracing",
    "pupsourcing.correlation",
    *(a.package for a in registry.ADAPTERS),
]

_DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", re.MULTILINE)
_MEMBERS = re.compile(r"members: \[([^\]]*)\]")


def resolve(path: str) -> Any:
    """The object a dotted documentation path names."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise LookupError(path)


def documented() -> dict[str, Any]:
    """Every documented path and its object (members lists expanded)."""
    found: dict[str, Any] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text()):
            path, options = match.group(1), match.group(2)
            found[path] = resolve(path)
            members = _MEMBERS.search(options)
            for name in members.group(1).split(",") if members else ():
                found[f"{path}.{name.strip()}"] = resolve(f"{path}.{name.strip()}")
    return found


def test_every_documented_path_resolves() -> None:
    assert len(documented()) > 40


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_all_lists_documented_names_only(package: str) -> None:
    module = importlib.import_module(package)
    docs = documented()
    objects = [id(obj) for obj in docs.values()]
    undocumented = [
        name
        for name in module.__all__
        if f"{package}.{name}" not in docs
        and id(getattr(module, name)) not in objects
        and name != "__version__"
    ]
    assert not undocumented, f"{package}.__all__ lists undocumented names: {undocumented}"


def test_documented_names_are_exported() -> None:
    """A documented ``package.Name`` is in that package's ``__all__``."""
    for path, obj in documented().items():
        package, _, name = path.rpartition(".")
        if package in PUBLIC_PACKAGES and not isinstance(obj, types.ModuleType):
            assert name in importlib.import_module(package).__all__, path


def test_the_registry_describes_every_adapter() -> None:
    from pupsourcing import aio
    from pupsourcing.migrations import ADAPTERS
    from pupsourcing.urls import parse_url

    assert ADAPTERS == registry.NAMES
    for adapter in registry.ADAPTERS:
        assert adapter.dialect_class.name == adapter.name
        assert adapter.store_class.dialect_class is adapter.dialect_class
        assert adapter.async_store_class.dialect_class is adapter.dialect_class
        assert getattr(aio, adapter.async_store) is adapter.async_store_class
        for scheme in adapter.schemes:
            url = f"{scheme}:///x.db" if adapter.name == "sqlite" else f"{scheme}://u@h/db"
            assert parse_url(url).adapter == adapter.name
    with pytest.raises(ValueError, match="unknown adapter 'oracle'"):
        registry.adapter("oracle")
