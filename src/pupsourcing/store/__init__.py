"""Store configuration and the protocols every adapter's store satisfies."""

from pupsourcing.store.checkpoint import Checkpoint
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dead_letter import DeadLetter
from pupsourcing.store.horizon import Horizon, Probe
from pupsourcing.store.protocols import (
    AggregateStreamReader,
    CheckpointStore,
    EventAppender,
    EventReader,
    EventStore,
)
from pupsourcing.store.snapshots import Snapshot

__all__ = [
    "AggregateStreamReader",
    "Checkpoint",
    "CheckpointStore",
    "DeadLetter",
    "EventAppender",
    "EventReader",
    "EventStore",
    "Horizon",
    "Probe",
    "Snapshot",
    "StoreConfig",
]
