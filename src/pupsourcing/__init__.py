"""pupsourcing: an append-only event store on PostgreSQL, MySQL/MariaDB and SQLite.

The core types live here; stores are in :mod:`pupsourcing.adapters`,
projections in :mod:`pupsourcing.projection`.
"""

import logging

from pupsourcing.core import (
    AppendResult,
    Event,
    ExpectedVersion,
    InvalidEventError,
    NoEventsError,
    OptimisticConcurrencyError,
    PartitionLayoutError,
    PersistedEvent,
    ProjectionError,
    PupsourcingError,
    SchemaError,
    Stream,
    uuid7,
)

__version__ = "0.1.0"

# A library logs, the application decides where logs go.
logging.getLogger("pupsourcing").addHandler(logging.NullHandler())

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
    "__version__",
    "uuid7",
]
