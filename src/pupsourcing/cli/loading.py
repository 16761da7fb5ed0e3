"""Load projections named ``module:attribute`` on the command line."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from pupsourcing._text import one_line
from pupsourcing.cli.errors import CommandError
from pupsourcing.projection import Projection
from pupsourcing.projection.batch import projection_name


def _looks_like_projection(obj: object) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "handle", None))


def _raised(exc: Exception) -> str:
    """``raised ValueError: message (file, line n)``: what and where."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError says where
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"raised {type(exc).__name__}: {one_line(exc)}{where}"


def _arguments_missing(factory: Callable[..., object]) -> str | None:
    """Why ``factory()`` cannot be called, or ``None`` when it can."""
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:
        return str(exc)
    except ValueError:  # no signature to look at: try the call
        pass
    return None


def load_projection(spec: str) -> Projection:
    """The projection ``spec`` names: ``package.module:attribute`` (dots in
    the attribute reach into it). The attribute may be a projection object,
    or a class or zero-argument factory returning one. The current directory
    is searched first, as ``python -m`` does."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"{spec!r}: name a projection as module:attribute, "
            "e.g. myapp.projections:OrdersReadModel"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"{spec}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the module's own code failed
        raise CommandError(f"{spec}: importing {module_name} {_raised(exc)}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{spec}: {module_name} has no attribute {attribute!r}") from None
    if not _looks_like_projection(obj) and callable(obj):
        missing = _arguments_missing(obj)
        if missing is not None:
            raise CommandError(f"{spec}: cannot create the projection without arguments: {missing}")
        try:
            obj = obj()
        except Exception as exc:
            raise CommandError(f"{spec}: creating the projection {_raised(exc)}") from None
    try:
        projection_name(obj)
    except TypeError as exc:
        raise CommandError(
            f"{spec} is not a projection (it needs a name and handle(event, tx)): {exc}"
        ) from None
    assert isinstance(obj, Projection)
    if inspect.iscoroutinefunction(obj.handle):
        raise CommandError(
            f"{spec}: its handle() is async; `projections run` runs blocking projections "
            "(run asyncio ones with pupsourcing.aio.AsyncRunner)"
        )
    return obj


def load_projections(specs: Sequence[str]) -> list[Projection]:
    """Every projection in ``specs``; their names must differ."""
    projections = [load_projection(spec) for spec in specs]
    names = [p.name for p in projections]
    for name in names:
        if names.count(name) > 1:
            raise CommandError(
                f"two projections are named {name!r}; checkpoints need distinct names"
            )
    return projections
