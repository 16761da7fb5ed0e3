"""The exceptions pupsourcing raises. All derive from :class:`PupsourcingError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pupsourcing.core.expected_version import ExpectedVersion


class PupsourcingError(Exception):
    """Base class of every error raised by pupsourcing."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The default calls ``type(self)(*self.args)``, which fails for the
        # errors whose constructor takes other arguments than their message.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(
    cls: type[PupsourcingError], args: tuple[Any, ...], state: dict[str, Any]
) -> PupsourcingError:
    """An error with ``args`` and attributes ``state``, without its ``__init__``
    (how errors are copied and unpickled)."""
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


class OptimisticConcurrencyError(PupsourcingError):
    """The expected version was not met, or a concurrent writer won the race.

    The aggregate's key, ``expected`` and ``actual`` are filled in where the
    store knows them; ``actual`` is the aggregate's version when the conflict
    was detected.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        bounded_context: str | None = None,
        aggregate_type: str | None = None,
        aggregate_id: str | None = None,
        expected: ExpectedVersion | None = None,
        actual: int | None = None,
    ) -> None:
        self.bounded_context = bounded_context
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        if message is None:
            stream = "/".join(str(p) for p in (bounded_context, aggregate_type, aggregate_id) if p)
            message = f"optimistic concurrency conflict on {stream}"
            if expected is not None:
                message += f": expected version {expected}"
                if actual is not None:
                    message += f", actual {actual}"
        super().__init__(message)


class SchemaError(PupsourcingError):
    """The store lacks a column or table pupsourcing needs: typically tables
    the Go library (or an older pupsourcing) created, before ``pupsourcing
    migrate`` or ``store.create_schema(tx)`` added what came since. ``table``
    names the table, ``column`` the missing column (``None`` when the table
    itself is missing); the driver's error is ``__cause__``.
    """

    def __init__(self, table: str, column: str | None = None) -> None:
        self.table = table
        self.column = column
        what = (
            f"table {table!r} does not exist: pupsourcing adds it beside the Go library's tables"
            if column is None
            else f"table {table!r} has no column {column!r}, which pupsourcing adds to the "
            "Go library's schema"
        )
        super().__init__(
            f"{what}: run `pupsourcing migrate` or store.create_schema(tx) once to add it "
            "(the Go library keeps working)"
        )


class NoEventsError(PupsourcingError, ValueError):
    """``append`` was called with no events."""

    def __init__(self, message: str = "append needs at least one event") -> None:
        super().__init__(message)


class InvalidEventError(PupsourcingError, ValueError):
    """An event cannot be stored as given. Nothing was written.

    ``index`` is the position of the offending event in the appended sequence
    (``None`` when the :class:`~pupsourcing.Event` itself refused the value as
    it was built) and ``field`` the name of the offending field.
    """

    def __init__(self, index: int | None, field: str, problem: str) -> None:
        self.index = index
        self.field = field
        self.problem = problem
        where = "" if index is None else f"event {index}: "
        super().__init__(f"{where}{field}: {problem}")


class StoredValueError(PupsourcingError, ValueError):
    """A field of a stored event cannot be decoded (the row was written by
    something else, or damaged). Raised when the field is first read: a
    store converts the event id, metadata and timestamp only then. The processors
    raise it as it is, not as a :class:`ProjectionError`: it is no handler
    failure."""


class ProjectionError(PupsourcingError):
    """A projection's handler raised; the original exception is ``__cause__``."""

    def __init__(self, projection: str, global_position: int, message: str | None = None) -> None:
        self.projection = projection
        self.global_position = global_position
        super().__init__(
            message or f"projection {projection!r} failed at global position {global_position}"
        )


class PartitionLayoutError(ProjectionError):
    """A processor was started for a projection whose checkpoints were made
    with another partition count (``total_partitions``; unpartitioned counts
    as 1). Raised before any event is handled, or by a running processor at
    its first batch after another count was recorded (a reset, then workers
    started with the new count; the batch is rolled back); nothing was changed.

    ``recorded`` is the count the checkpoints were made with, ``requested``
    the processor's."""

    def __init__(self, projection: str, recorded: int, requested: int) -> None:
        self.recorded = recorded
        self.requested = requested
        super().__init__(
            projection,
            0,
            f"projection {projection!r}: its checkpoints were made with "
            f"{_partitions(recorded)}, this processor has total_partitions={requested}; "
            "its partitions would skip or repeat events. Keep total_partitions="
            f"{recorded}, or rebuild: run it under a new projection name, or stop its "
            f"workers, clear its read model and run `pupsourcing projections reset "
            f"{projection}` before starting it with the new count",
        )


def _partitions(count: int) -> str:
    return "no partitions (total_partitions=1)" if count <= 1 else f"total_partitions={count}"
