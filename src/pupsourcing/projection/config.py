"""Processor configuration."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Literal

from pupsourcing.projection.partition import HashPartitionStrategy
from pupsourcing.projection.protocols import PartitionStrategy


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_BATCH_SIZE = 2**63 - 1
"""A batch is read with a ``LIMIT``, a BIGINT on every database."""
MAX_PARTITIONS = 2**31 - 1
"""The partition count is recorded in an ``INT`` column (the layouts table);
the 32-bit FNV-1a hash spreads aggregates over no more partitions anyway."""

ON_FAILURE = ("stop", "dead_letter")
"""What a processor does with a batch that failed ``max_attempts`` times."""


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """How a :class:`~pupsourcing.projection.Processor` reads and partitions.

    ``batch_size`` events are handled per transaction. With
    ``total_partitions > 1`` this processor handles only the aggregates that
    ``partition_strategy`` assigns to ``partition_key`` (0-based) and keeps its
    checkpoint under ``"<name>_p<partition_key>"``, as the Go library does.
    ``poll_interval`` is the pause in seconds when there is nothing to do.
    ``logger`` defaults to the ``pupsourcing`` logger.

    A batch whose handler raises is tried ``max_attempts`` times in all,
    backing off between attempts; then ``on_failure="stop"`` raises
    :class:`~pupsourcing.ProjectionError`, and ``"dead_letter"`` handles the
    events before the failing one, records the failing event in the store's
    dead-letters table and moves the checkpoint past it (one transaction),
    then goes on.
    """

    batch_size: int = 100
    partition_key: int = 0
    total_partitions: int = 1
    partition_strategy: PartitionStrategy = field(default_factory=HashPartitionStrategy)
    poll_interval: float = 0.1
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None
    max_attempts: int = 1
    on_failure: Literal["stop", "dead_letter"] = "stop"

    def __post_init__(self) -> None:
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(
                f"batch_size must be an int in [1, {MAX_BATCH_SIZE}] (a BIGINT LIMIT), "
                f"got {self.batch_size!r}"
            )
        if not _is_int(self.total_partitions) or not 1 <= self.total_partitions <= MAX_PARTITIONS:
            raise ValueError(
                f"total_partitions must be an int in [1, {MAX_PARTITIONS}] (an INT column), "
                f"got {self.total_partitions!r}"
            )
        if not _is_int(self.partition_key) or not 0 <= self.partition_key < self.total_partitions:
            raise ValueError(
                f"partition_key must be an int in [0, {self.total_partitions}), "
                f"got {self.partition_key!r}"
            )
        if not callable(getattr(self.partition_strategy, "should_process", None)):
            raise ValueError("partition_strategy must have a should_process method")
        interval = self.poll_interval
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval < 0
        ):
            raise ValueError(f"poll_interval must be a non-negative number, got {interval!r}")
        if self.logger is not None and not isinstance(
            self.logger, logging.Logger | logging.LoggerAdapter
        ):
            raise ValueError("logger must be a logging.Logger or LoggerAdapter")
        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(
                f"on_failure must be one of {', '.join(map(repr, ON_FAILURE))}, "
                f"got {self.on_failure!r}"
            )

    def checkpoint_name(self, projection_name: str) -> str:
        """The checkpoint key of ``projection_name`` under this config."""
        if self.total_partitions > 1:
            return partition_checkpoint_name(projection_name, self.partition_key)
        return projection_name

    def get_logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        return self.logger if self.logger is not None else logging.getLogger("pupsourcing")


_PARTITION_SUFFIX = re.compile(r"(?P<name>.+)_p(?P<key>0|[1-9][0-9]*)\Z")


def partition_checkpoint_name(projection_name: str, partition_key: int) -> str:
    """``"orders_p2"``: the checkpoint key of partition 2 of ``"orders"``."""
    return f"{projection_name}_p{partition_key}"


def split_checkpoint_name(checkpoint: str) -> tuple[str, int | None]:
    """The inverse of :meth:`ProcessorConfig.checkpoint_name`: ``("orders",
    2)`` for ``"orders_p2"`` (partition 2 of a partitioned projection),
    ``("orders", None)`` for ``"orders"``."""
    match = _PARTITION_SUFFIX.match(checkpoint)
    if match is None:
        return checkpoint, None
    return match["name"], int(match["key"])


def projection_of(checkpoint: str, own: Container[str]) -> tuple[str, int | None]:
    """:func:`split_checkpoint_name`, except that a checkpoint in ``own`` (the
    projections with a layout record, :func:`~pupsourcing.store.layout.layout_names`)
    is an unpartitioned projection: ``orders_p1`` may be one, not partition 1
    of ``orders``."""
    if checkpoint in own:
        return checkpoint, None
    return split_checkpoint_name(checkpoint)
