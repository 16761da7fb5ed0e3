"""Fixed pieces of the generated module: scalar codecs and plumbing.

Each piece is emitted verbatim (only the scalar codecs a mapping needs), so the
text here is exactly what users read in their generated module.
"""

from __future__ import annotations

# Scalars whose JSON value is the Python value have one function for both
# directions; the others have a ``_to_json`` / ``_from_json`` pair. In output order.
SCALAR_CODECS: dict[str, str] = {
    "str": """
        def _str_to_json(value: object, key: str) -> str:
            if not isinstance(value, str):
                raise _type_error(key, "str", value)
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    where = f"{value[exc.start]!r} at {exc.start}"
                    raise PayloadError(
                        f"text with a lone surrogate ({where}) cannot be encoded as UTF-8",
                        field=key,
                    ) from None
            return value


        def _str_from_json(value: object, key: str) -> str:
            if not isinstance(value, str):
                raise _type_error(key, "str", value)
            return value
    """,
    "int": """
        def _int(value: object, key: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(key, "int", value)
            return value
    """,
    "float": """
        def _float(value: object, key: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(key, "float", value)
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise PayloadError(f"{value!r} is not a finite number", field=key)
            return number
    """,
    "bool": """
        def _bool(value: object, key: str) -> bool:
            if not isinstance(value, bool):
                raise _type_error(key, "bool", value)
            return value
    """,
    "bytes": """
        def _bytes_to_json(value: object, key: str) -> str:
            if not isinstance(value, bytes):
                raise _type_error(key, "bytes", value)
            return base64.b64encode(value).decode("ascii")


        def _bytes_from_json(value: object, key: str) -> bytes:
            if value is None:  # Go's encoding/json writes a nil []byte as null
                return b""
            text = _str_from_json(value, key)
            try:
                return base64.b64decode(text, validate=True)
            except ValueError:
                raise PayloadError("not valid base64", field=key) from None
    """,
    "datetime": """
        def _datetime_to_json(value: object, key: str) -> str:
            if not isinstance(value, datetime):
                raise _type_error(key, "datetime", value)
            offset = value.utcoffset()
            if offset is None:
                raise PayloadError("naive datetime: give it a timezone", field=key)
            if offset.microseconds:
                # Never a real time zone's; and fromisoformat() loses some of them.
                raise PayloadError(f"UTC offset {offset} is not whole seconds", field=key)
            return value.isoformat()


        def _datetime_from_json(value: object, key: str) -> datetime:
            text = _str_from_json(value, key)
            try:
                result = datetime.fromisoformat(text)
            except ValueError:
                raise PayloadError(f"{text!r} is not an ISO 8601 datetime", field=key) from None
            if result.utcoffset() is None:
                raise PayloadError(f"{text!r} has no UTC offset", field=key)
            return result
    """,
    "date": """
        def _date_to_json(value: object, key: str) -> str:
            if isinstance(value, datetime) or not isinstance(value, date):
                raise _type_error(key, "date", value)
            return value.isoformat()


        def _date_from_json(value: object, key: str) -> date:
            text = _str_from_json(value, key)
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise PayloadError(f"{text!r} is not an ISO 8601 date", field=key) from None
    """,
    "uuid": """
        def _uuid_to_json(value: object, key: str) -> str:
            if not isinstance(value, UUID):
                raise _type_error(key, "UUID", value)
            return str(value)


        def _uuid_from_json(value: object, key: str) -> UUID:
            text = _str_from_json(value, key)
            try:
                return UUID(text)
            except ValueError:
                raise PayloadError(f"{text!r} is not a UUID", field=key) from None
    """,
    "decimal": """
        def _decimal_to_json(value: object, key: str) -> str:
            if not isinstance(value, Decimal):
                raise _type_error(key, "Decimal", value)
            return str(value)


        def _decimal_from_json(value: object, key: str) -> Decimal:
            text = _str_from_json(value, key)
            try:
                return Decimal(text)
            except InvalidOperation:
                raise PayloadError(f"{text!r} is not a decimal number", field=key) from None
    """,
}

PLUMBING: tuple[str, ...] = (
    """
        def _encoder_of(event: object) -> _Encoder:
            encoder = _ENCODERS.get(type(event))
            if encoder is None:
                raise UnknownEventClassError(event)
            return encoder
    """,
    """
        def _payload(event: object, encoder: _Encoder) -> bytes:
            event_type, event_version, to_json = encoder
            try:
                text = json.dumps(
                    to_json(event),
                    ensure_ascii=False,
                    separators=(",", ":"),
                    allow_nan=False,
                )
                return text.encode("utf-8")
            except PayloadError as exc:
                exc.set_event(event_type, event_version)
                raise
    """,
    """
        def _to_es_event(
            bounded_context: str,
            aggregate_type: str,
            aggregate_id: str,
            event: object,
            encoder: _Encoder,
            *,
            causation_id: str | None,
            correlation_id: str | None,
            trace_id: str | None,
            metadata: bytes | None,
        ) -> Event:
            event_type, event_version, _ = encoder
            return Event(
                bounded_context,
                aggregate_type,
                aggregate_id,
                event_type,
                _payload(event, encoder),
                event_version=event_version,
                metadata=b"{}" if metadata is None else metadata,
                causation_id=causation_id,
                correlation_id=correlation_id,
                trace_id=trace_id,
            )
    """,
    '''
        class _Decoding:
            """Decode one stored event: check its type and version, parse its payload.

            Entering gives the payload's JSON object (with exactly the expected fields);
            payload errors raised inside the block are completed with the event's type
            and version, and errors the event class itself raises (say, in
            ``__post_init__``) become ``PayloadError``.
            """

            def __init__(
                self,
                event: Event,
                event_type: str,
                event_version: int,
                fields: tuple[str, ...],
            ) -> None:
                self.event = event
                self.event_type = event_type
                self.event_version = event_version
                self.fields = fields

            def __enter__(self) -> dict[str, object]:
                actual = (self.event.event_type, self.event.event_version)
                if actual != (self.event_type, self.event_version):
                    raise EventTypeMismatchError(self.event_type, self.event_version, *actual)
                try:
                    try:
                        value = json.loads(self.event.payload.decode("utf-8"))
                    except ValueError as exc:
                        raise PayloadError(f"the payload is not UTF-8 JSON: {exc}") from None
                    return _object_from_json(value, None, self.fields)
                except PayloadError as exc:
                    exc.set_event(self.event_type, self.event_version)
                    raise

            def __exit__(
                self,
                exc_type: type[BaseException] | None,
                exc: BaseException | None,
                traceback: TracebackType | None,
            ) -> None:
                if isinstance(exc, PayloadError):
                    exc.set_event(self.event_type, self.event_version)
                elif isinstance(exc, EventMappingError):
                    return
                elif isinstance(exc, Exception):  # an assert, a KeyError, ...: named
                    said = str(exc) if isinstance(exc, TypeError | ValueError) else repr(exc)
                    raise PayloadError(
                        f"the class rejected the payload: {said}",
                        event_type=self.event_type,
                        event_version=self.event_version,
                    ) from exc
    ''',
    """
        def _object_from_json(
            value: object,
            key: str | None,
            fields: tuple[str, ...],
        ) -> dict[str, object]:
            if not isinstance(value, dict):
                raise _type_error(key, "a JSON object", value)
            missing = [name for name in fields if name not in value]
            if missing:
                raise PayloadError(f"missing {_names(missing)}", field=key)
            extra = sorted(name for name in value if name not in fields)
            if extra:
                raise PayloadError(f"unexpected {_names(extra)}", field=key)
            return value
    """,
    """
        def _names(names: list[str]) -> str:
            listed = ", ".join(repr(name) for name in names)
            return f"field {listed}" if len(names) == 1 else f"fields {listed}"
    """,
    """
        def _type_error(key: str | None, expected: str, value: object) -> PayloadError:
            got = "None" if value is None else type(value).__name__
            return PayloadError(f"expected {expected}, got {got}", field=key)
    """,
    """
        def _unknown_event(event: Event) -> EventMappingError:
            versions = _VERSIONS.get(event.event_type)
            if versions is None:
                return UnknownEventTypeError(event.event_type, event.event_version)
            return UnknownEventVersionError(event.event_type, event.event_version, versions)
    """,
    '''
        class _Codec:
            """The codec protocol of ``pupsourcing.domain`` over this mapping: give
            ``CODEC`` to a ``Repository`` and its aggregates record these event classes."""

            def encode(self, event: object) -> tuple[str, int, bytes]:
                encoder = _encoder_of(event)
                return encoder[0], encoder[1], _payload(event, encoder)

            def decode(
                self,
                event_type: str,
                event_version: int,
                payload: bytes,
            ) -> DomainEvent:
                event = Event("-", "-", "-", event_type, payload, event_version=event_version)
                return from_es_event(event)
    ''',
)
