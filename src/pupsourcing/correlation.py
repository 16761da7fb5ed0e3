"""Correlation and causation ids set once per unit of work (a web request, a
message handled) and carried by every event appended inside it.

>>> from pupsourcing.correlation import correlation, current
>>> with correlation("req-42", causation_id="cmd-7"):
...     current()
('req-42', 'cmd-7')
>>> current()
(None, None)

Inside the ``with`` block (and the tasks and threads started with its
context: :mod:`contextvars`), each event given to ``append`` whose
``correlation_id`` or ``causation_id`` is ``None`` is stored with the
block's; an event that sets its own keeps it. Standard library only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from pupsourcing import _observe

__all__ = ["correlation", "current"]

_ids: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "pupsourcing_correlation", default=(None, None)
)


def _check(field: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{field} must be a non-empty str or None, got {value!r}")


@contextlib.contextmanager
def correlation(correlation_id: str | None, *, causation_id: str | None = None) -> Iterator[None]:
    """Within the block, appended events without their own ids get
    ``correlation_id`` and ``causation_id`` (``None`` leaves a field as the
    event has it). Blocks nest; the inner one wins."""
    _check("correlation_id", correlation_id)
    _check("causation_id", causation_id)
    if _observe.installed(_CorrelationObserver) is None:
        _observe.install(_CorrelationObserver())
    token = _ids.set((correlation_id, causation_id))
    try:
        yield
    finally:
        _ids.reset(token)


def current() -> tuple[str | None, str | None]:
    """The (correlation id, causation id) set by the enclosing :func:`correlation`."""
    return _ids.get()


class _CorrelationObserver(_observe.Observer):
    """Gives appended events the enclosing block's ids."""

    def ids(self) -> _observe.Ids | None:
        correlation_id, causation_id = _ids.get()
        if correlation_id is None and causation_id is None:
            return None
        return correlation_id, causation_id, None
