"""Reading stored JSON for display: the values it holds, or an error when
printing what Python's json module read would show other values than the
stored text (the CLI's event output and the web console both show it)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _exact_float(text: str) -> float:
    """A JSON number with a fraction or exponent, if a float holds it: one
    that would print differently (``1e400`` as Infinity, ``0.30000000000000001``
    as 0.3) is not read."""
    value = float(text)
    if not math.isfinite(value) or Decimal(repr(value)) != Decimal(text):
        raise ValueError(f"{text} does not fit a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("an object has a key twice")
    return value


def exact_json(text: str) -> Any:
    """The JSON value ``text`` holds, when printing it gives back the stored
    values. :class:`ValueError` for NaN and Infinity (which Python's json
    reads, but are not JSON), numbers a float would round or overflow and
    objects with a key twice (shown, they would be something else);
    :class:`RecursionError` for JSON nested too deeply for Python's parser."""
    return json.loads(
        text,
        parse_constant=_not_json,
        parse_float=_exact_float,
        object_pairs_hook=_unique_keys,
    )
