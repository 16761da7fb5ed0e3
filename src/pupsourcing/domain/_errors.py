"""The errors of the domain layer."""

from __future__ import annotations

from pupsourcing.core.errors import PupsourcingError


class CodecError(PupsourcingError, ValueError):
    """An object cannot be encoded, or a stored payload cannot be decoded.

    ``event_type`` and ``event_version`` name the event when they are known;
    the message names them too, and the field when one is at fault.
    """

    def __init__(
        self,
        message: str,
        *,
        event_type: str | None = None,
        event_version: int | None = None,
    ) -> None:
        self.event_type = event_type
        self.event_version = event_version
        if event_type is not None:
            where = event_type if event_version is None else f"{event_type} v{event_version}"
            message = f"{where}: {message}"
        super().__init__(message)


class AggregateNotFoundError(PupsourcingError, LookupError):
    """The aggregate has no events (at or below the requested version)."""

    def __init__(self, bounded_context: str, aggregate_type: str, aggregate_id: str) -> None:
        self.bounded_context = bounded_context
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        super().__init__(
            f"aggregate {bounded_context}/{aggregate_type}/{aggregate_id} has no events"
        )

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return str(self.args[0])
