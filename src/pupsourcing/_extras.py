"""Optional dependencies: an import error that names the extra to install."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a module missing from the imports in the block into a
    :class:`ModuleNotFoundError` that says ``feature`` needs ``pupsourcing[extra]``
    (``name`` stays the missing module's)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "pupsourcing":
            raise
        raise ModuleNotFoundError(
            f"{feature} needs the {extra} extra ({exc.name} is missing): "
            f"pip install 'pupsourcing[{extra}]'",
            name=exc.name,
        ) from None
