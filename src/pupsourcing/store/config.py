"""Store configuration: the names of the store's tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

MAX_TABLE_NAME_LENGTH = 47
"""Index names are ``idx_<table>_correlation``; this keeps them within the
63-character identifier limit of PostgreSQL (64 on MySQL)."""

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")


def validate_identifier(field: str, name: object) -> str:
    """Return ``name`` if it is a safe table name, else raise ``ValueError``."""
    if not isinstance(name, str):
        raise ValueError(f"{field}: table name must be a str, got {type(name).__name__}")
    if not _IDENTIFIER.match(name) or len(name) > MAX_TABLE_NAME_LENGTH:
        raise ValueError(
            f"{field}: {name!r} is not a valid table name: use lowercase letters, digits "
            f"and underscores, starting with a letter or underscore, at most "
            f"{MAX_TABLE_NAME_LENGTH} characters"
        )
    return name


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Table names used by a store. Each must be a plain lowercase identifier.

    ``dead_letters_table`` holds the events projections set aside under
    ``ProcessorConfig(on_failure="dead_letter")``; the Go library has no such
    table and never touches it.
    """

    events_table: str = "events"
    checkpoints_table: str = "projection_checkpoints"
    aggregate_heads_table: str = "aggregate_heads"
    snapshots_table: str = "aggregate_snapshots"
    """Aggregate snapshots of :class:`pupsourcing.domain.Repository` (a table the
    Go library does not have and never touches)."""
    dead_letters_table: str = "projection_dead_letters"
    layouts_table: str = "projection_layouts"
    """The partition count each projection's checkpoints were made with (a
    table the Go library does not have and never touches)."""
    leases_table: str = "projection_leases"
    """Partition leases of ``projections run --claim`` and
    :class:`pupsourcing.projection.ClaimingRunner`, and the lease of the
    relay copy that publishes (pupsourcing only)."""

    def __post_init__(self) -> None:
        names = [validate_identifier(f.name, getattr(self, f.name)) for f in fields(self)]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be distinct, got {names}")
