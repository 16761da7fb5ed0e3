"""What a store knows about one projection checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One row of the checkpoints table.

    ``name`` is the checkpoint key (the projection's name, or
    ``"<name>_p<k>"`` for partition ``k``), ``position`` the last global
    position handled. ``updated_at`` (UTC) and ``age`` (seconds since that
    update, by the database's clock) are ``None`` when the database holds a
    value they cannot be read from.
    """

    name: str
    position: int
    updated_at: datetime | None
    age: float | None
