"""Core types and errors: database-agnostic, standard library only."""

from pupsourcing.core.errors import (
    InvalidEventError,
    NoEventsError,
    OptimisticConcurrencyError,
    PartitionLayoutError,
    ProjectionError,
    PupsourcingError,
    SchemaError,
)
from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.ids import uuid7

__all__ = [
    "AppendResult",
    "Event",
    "ExpectedVersion",
    "InvalidEventError",
    "NoEventsError",
    "OptimisticConcurrencyError",
    "PartitionLayoutError",
    "PersistedEvent",
    "ProjectionError",
    "PupsourcingError",
    "SchemaError",
    "Stream",
    "uuid7",
]
