"""Store configuration and the protocols every adapter's store satisfies."""

from pupsourcing.store.config import StoreConfig
from pupsourcing.store.protocols import (
    AggregateStreamReader,
    CheckpointStore,
    EventAppender,
    EventReader,
    EventStore,
)

__all__ = [
    "AggregateStreamReader",
    "CheckpointStore",
    "EventAppender",
    "EventReader",
    "EventStore",
    "StoreConfig",
]
