"""The headers an event is published with."""

from __future__ import annotations

from pupsourcing.core.events import PersistedEvent

MSG_ID = "Nats-Msg-Id"
GLOBAL_POSITION = "Pupsourcing-Global-Position"

_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " "})
_HEADER_BLOCK = len(b"NATS/1.0\r\n\r\n")
"""The bytes of a header block besides its lines (``Name: value\\r\\n``)."""


def headers(event: PersistedEvent) -> dict[str, str]:
    """The message headers of ``event``: ``Nats-Msg-Id`` (the event id, for
    JetStream's de-duplication) and the event's fields that are not in the
    subject or the data. ``Pupsourcing-Metadata`` is the metadata as UTF-8
    text with line breaks made spaces (a header is one line; in JSON text a
    raw line break can only be white space), absent when the metadata is NULL;
    the causation, correlation and trace ids are present only when set."""
    event_id = str(event.event_id)
    result = {
        MSG_ID: event_id,
        GLOBAL_POSITION: str(event.global_position),
        "Pupsourcing-Aggregate-Version": str(event.aggregate_version),
        "Pupsourcing-Event-Type": event.event_type,
        "Pupsourcing-Event-Version": str(event.event_version),
        "Pupsourcing-Event-Id": event_id,
        "Pupsourcing-Created-At": event.created_at.isoformat(),
    }
    if event.metadata is not None:
        text = event.metadata.decode("utf-8", "replace")
        result["Pupsourcing-Metadata"] = text.translate(_LINE_BREAKS)
    if event.causation_id is not None:
        result["Pupsourcing-Causation-Id"] = event.causation_id
    if event.correlation_id is not None:
        result["Pupsourcing-Correlation-Id"] = event.correlation_id
    if event.trace_id is not None:
        result["Pupsourcing-Trace-Id"] = event.trace_id
    return result


def size(payload: bytes, values: dict[str, str]) -> int:
    """The bytes of a message with ``payload`` and the headers ``values``,
    as the server counts them against its ``max_payload`` (at most that:
    nats-py strips white space around header values)."""
    lines = sum(len(name) + len(value.encode()) + 4 for name, value in values.items())
    return len(payload) + _HEADER_BLOCK + lines
