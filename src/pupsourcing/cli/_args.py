"""Value types for ``argparse`` options shared by the commands."""

from __future__ import annotations

import argparse
import os

from pupsourcing.store.schema import MAX_PARTITION_INDEXES


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def partition_index_count(text: str) -> int:
    """A partition count there are partition indexes for (2 to 256)."""
    value = int(text)
    if not 2 <= value <= MAX_PARTITION_INDEXES:
        raise argparse.ArgumentTypeError(f"must be from 2 to {MAX_PARTITION_INDEXES}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def seconds(text: str) -> float:
    """A finite, non-negative number of seconds (0 allowed)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds, got {text}")
    return value


def interval(text: str) -> float:
    """A finite, positive number of seconds."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def typed_text(text: str) -> str:
    """A name as typed: terminals send UTF-8 whatever the locale, and Python
    in an ASCII locale reads the bytes beyond ASCII as surrogate escapes
    (``\\udcc3``) that match no stored name. Those become the UTF-8 text
    they were; anything else is kept as it is."""
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeError:
        return text
