"""Errors of the event mapping: at generation time, and raised by generated modules.

Generated mapping modules import these classes, so their names, constructor
arguments and attributes are part of the public contract.
"""

from __future__ import annotations

from pupsourcing.core.errors import PupsourcingError
from pupsourcing.domain import CodecError


class GenerationError(PupsourcingError, ValueError):
    """The input directory cannot be turned into a mapping module.

    The message is one line that says what is wrong and where (file, line,
    class and field when they are known).
    """


class EventMappingError(CodecError):
    """A domain event or a stored event cannot be mapped.

    A :class:`~pupsourcing.domain.CodecError` (so a ``ValueError``), as the
    codec protocol asks of the generated module's ``CODEC``.

    ``event_type`` and ``event_version`` name the event when they are known;
    ``index`` (the event's place in the sequence being mapped) and
    ``global_position`` (for stored events) are filled in by the functions
    that map sequences.
    """

    def __init__(
        self,
        reason: str,
        *,
        event_type: str | None = None,
        event_version: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_type = event_type
        self.event_version = event_version
        self.index: int | None = None
        self.global_position: int | None = None

    def locate(self, index: int, global_position: int | None = None) -> None:
        """Record where in a sequence of events the failure happened."""
        self.index = index
        self.global_position = global_position

    def _location(self) -> str:
        if self.index is None:
            return ""
        if self.global_position is None:
            return f"event {self.index}: "
        return f"event {self.index} (global position {self.global_position}): "

    def _event(self) -> str:
        if self.event_type is None:
            return ""
        if self.event_version is None:
            return f"{self.event_type}: "
        return f"{self.event_type} v{self.event_version}: "

    def __str__(self) -> str:
        return f"{self._location()}{self._event()}{self.reason}"


class UnknownEventTypeError(EventMappingError):
    """A stored event's type is not one the mapping module was generated for."""

    def __init__(self, event_type: str, event_version: int) -> None:
        super().__init__(
            f"unknown event type {event_type!r} (event_version {event_version}): "
            "no class in the mapping has that name",
            event_type=event_type,
            event_version=event_version,
        )

    def _event(self) -> str:
        return ""


class UnknownEventVersionError(EventMappingError):
    """A stored event's type is known, but not in that version."""

    def __init__(
        self, event_type: str, event_version: int, known_versions: tuple[int, ...]
    ) -> None:
        known = ", ".join(str(v) for v in known_versions)
        plural = "s" if len(known_versions) > 1 else ""
        super().__init__(
            f"unknown version {event_version} of event type {event_type!r} "
            f"(the mapping knows version{plural} {known})",
            event_type=event_type,
            event_version=event_version,
        )
        self.known_versions = known_versions

    def _event(self) -> str:
        return ""


class EventTypeMismatchError(EventMappingError):
    """A per-type helper got a stored event of another type or version."""

    def __init__(
        self, expected_type: str, expected_version: int, event_type: str, event_version: int
    ) -> None:
        super().__init__(
            f"expected a {expected_type} v{expected_version} event, "
            f"got {event_type} v{event_version}",
            event_type=event_type,
            event_version=event_version,
        )
        self.expected_type = expected_type
        self.expected_version = expected_version

    def _event(self) -> str:
        return ""


class UnknownEventClassError(EventMappingError, TypeError):
    """An object to map is not (exactly) one of the mapped event classes."""

    def __init__(self, obj: object, expected: str | None = None) -> None:
        cls = type(obj)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if expected is None:
            reason = f"{name} is not an event class of this mapping"
        else:
            reason = f"expected {expected}, got {name}"
        super().__init__(reason)


class PayloadError(EventMappingError):
    """A payload does not match its event class, or a field value cannot be encoded.

    ``field`` is the path of the offending value inside the payload, such as
    ``address.city`` or ``lines[2].price``; ``None`` when the payload as a
    whole is wrong (not JSON, not an object, ...).
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        event_type: str | None = None,
        event_version: int | None = None,
    ) -> None:
        super().__init__(reason, event_type=event_type, event_version=event_version)
        self.field = field or None

    def prefix_field(self, *keys: str) -> None:
        """Put ``keys`` (field names, ``[index]`` or ``["key"]``) in front of the path.

        An empty key stands for the value itself and adds nothing.
        """
        for key in reversed(keys):
            if not key:
                continue
            if self.field is None:
                self.field = key
            elif self.field.startswith("["):
                self.field = key + self.field
            else:
                self.field = f"{key}.{self.field}"

    def set_event(self, event_type: str, event_version: int) -> None:
        """Name the event whose payload this is."""
        self.event_type = event_type
        self.event_version = event_version

    def __str__(self) -> str:
        field = "" if self.field is None else f"field {self.field!r}: "
        return f"{self._location()}{self._event()}{field}{self.reason}"
