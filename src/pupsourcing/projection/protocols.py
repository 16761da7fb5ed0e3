"""What a projection is: any object with a name and a ``handle`` method."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, runtime_checkable

from pupsourcing.core.events import PersistedEvent


@runtime_checkable
class Projection(Protocol):
    """Turns events into something else: a read model, a message, an email.

    ``name`` (attribute or property) is the checkpoint key. ``handle`` gets each
    event and the processor's connection ``tx``, inside the transaction that
    also advances the checkpoint: writes made through ``tx`` are applied
    exactly once. Raising rolls the whole batch back.
    """

    @property
    def name(self) -> str: ...

    def handle(self, event: PersistedEvent, tx: Any) -> None: ...


@runtime_checkable
class AsyncProjection(Protocol):
    """A projection for :class:`pupsourcing.aio.AsyncProcessor`: as
    :class:`Projection`, but ``handle`` may also be ``async def`` (it is
    awaited); ``tx`` is then the processor's asyncio connection. Scopes
    (``aggregate_types``, ``bounded_contexts``) work as for
    :class:`ScopedProjection`."""

    @property
    def name(self) -> str: ...

    def handle(self, event: PersistedEvent, tx: Any) -> Awaitable[None] | None: ...


@runtime_checkable
class ScopedProjection(Projection, Protocol):
    """A projection that only wants some aggregate types and bounded contexts.

    Empty or missing means all. The processor filters in SQL, so out-of-scope
    events are never fetched.
    """

    @property
    def aggregate_types(self) -> Sequence[str]: ...

    @property
    def bounded_contexts(self) -> Sequence[str]: ...


class PartitionStrategy(Protocol):
    """Decides which partition handles an aggregate's events."""

    def should_process(
        self, aggregate_id: str, partition_key: int, total_partitions: int
    ) -> bool: ...
