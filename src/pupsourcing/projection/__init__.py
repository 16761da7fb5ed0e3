"""Projections: pull-based, checkpointed, partitioned, exactly-once, gap-safe.

>>> from pupsourcing.projection import HashPartitionStrategy
>>> HashPartitionStrategy().should_process("order-1", 0, 1)
True
"""

from pupsourcing.core.errors import PartitionLayoutError
from pupsourcing.projection.claiming import ClaimingRunner
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.partition import HashPartitionStrategy
from pupsourcing.projection.processor import Processor
from pupsourcing.projection.protocols import (
    AsyncProjection,
    PartitionStrategy,
    Projection,
    ScopedProjection,
)
from pupsourcing.store.dead_letter import DeadLetter

__all__ = [
    "AsyncProjection",
    "ClaimingRunner",
    "DeadLetter",
    "HashPartitionStrategy",
    "PartitionLayoutError",
    "PartitionStrategy",
    "Processor",
    "ProcessorConfig",
    "Projection",
    "ScopedProjection",
]
