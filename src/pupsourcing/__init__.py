"""pupsourcing: an append-only event store on PostgreSQL, MySQL/MariaDB and SQLite.

The core types live here; stores are in :mod:`pupsourcing.adapters`,
projections in :mod:`pupsourcing.projection`.
"""

from pupsourcing.core import (
    AppendResult,
    Event,
    ExpectedVersion,
    InvalidEventError,
    NoEventsError,
    OptimisticConcurrencyError,
    PersistedEvent,
    ProjectionError,
    PupsourcingError,
    Stream,
)

__version__ = "0.1.0"

__all__ = [
    "AppendResult",
    "Event",
    "ExpectedVersion",
    "InvalidEventError",
    "NoEventsError",
    "OptimisticConcurrencyError",
    "PersistedEvent",
    "ProjectionError",
    "PupsourcingError",
    "Stream",
    "__version__",
]
