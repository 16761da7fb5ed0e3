"""FNV-1a, the hash that assigns aggregates to partitions (as the Go library does)."""

from __future__ import annotations

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data`` as an unsigned int (Go's ``fnv.New32a``)."""
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def partition_hash(aggregate_id: str) -> int:
    """The hash partitioned projections use: FNV-1a 32 of the UTF-8 aggregate id."""
    return fnv1a_32(aggregate_id.encode("utf-8"))
