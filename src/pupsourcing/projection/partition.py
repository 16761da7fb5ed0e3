"""Hash partitioning: every aggregate belongs to exactly one partition."""

from __future__ import annotations

from pupsourcing.core.hashing import partition_hash


class HashPartitionStrategy:
    """FNV-1a 32-bit over the UTF-8 bytes of the aggregate id, modulo the number
    of partitions: bit for bit the Go library's assignment, so Go and Python
    workers can share the partitions of one projection.

    All events of an aggregate go to the same partition, so per-aggregate order
    is kept. The processor applies this strategy in SQL (see the
    ``partition_hash`` column), so a partition never fetches other partitions'
    events.
    """

    __slots__ = ()

    def should_process(self, aggregate_id: str, partition_key: int, total_partitions: int) -> bool:
        if total_partitions <= 1:
            return True
        return partition_hash(aggregate_id) % total_partitions == partition_key

    def __eq__(self, other: object) -> bool:
        return type(other) is HashPartitionStrategy

    def __hash__(self) -> int:
        return hash(HashPartitionStrategy)

    def __repr__(self) -> str:
        return "HashPartitionStrategy()"
