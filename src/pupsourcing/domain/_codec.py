"""The codec protocol and :class:`JsonCodec`."""

from __future__ import annotations

import typing
from typing import Protocol, TypeVar, runtime_checkable

from pupsourcing.domain._errors import CodecError
from pupsourcing.domain._upcast import Upcaster, Upcasters
from pupsourcing.domain._values import (
    ValueProblem,
    decoder,
    dumps,
    from_json,
    is_record_class,
    loads,
    record_fields,
    to_json,
)

C = TypeVar("C", bound=type)


@runtime_checkable
class Codec(Protocol):
    """Turns domain events into store payloads and back.

    ``encode`` raises :class:`CodecError` for an object it does not know;
    ``decode`` for an unknown type or version, or a payload that does not fit.
    """

    def encode(self, event: object) -> tuple[str, int, bytes]:
        """``(event_type, event_version, payload)`` for a domain event."""
        ...

    def decode(self, event_type: str, event_version: int, payload: bytes) -> object:
        """The domain event a stored ``(event_type, event_version, payload)`` holds."""
        ...


class JsonCodec:
    """A codec for dataclasses (and pydantic models and msgspec Structs when
    installed), with payloads as compact, deterministic UTF-8 JSON.

    Register each event class with its ``event_type`` (default: the class
    name) and ``version`` (default 1). Nested dataclasses, timezone-aware
    ``datetime``, ``date``, ``time``, ``UUID``, ``Decimal``, ``Enum``,
    ``bytes``, ``tuple`` (NamedTuples too), ``list``, ``set`` and ``dict`` fields round-trip
    exactly (decoding follows the field annotations); ``register`` refuses a
    type that would not, such as a union JSON cannot tell apart
    (``str | UUID``). ``decode`` runs the
    upcasters (:meth:`upcast`) from the stored version up to the newest
    registered version of the type.
    """

    def __init__(self) -> None:
        self._by_class: dict[type, tuple[str, int]] = {}
        self._by_type: dict[str, dict[int, type]] = {}
        self._upcasters = Upcasters()

    def register(self, cls: C, event_type: str | None = None, version: int = 1) -> C:
        """Map ``cls`` to ``event_type`` (default ``cls.__name__``) at ``version``;
        returns ``cls``, so it also works as a class decorator."""
        if not is_record_class(cls):
            raise TypeError(
                f"{getattr(cls, '__qualname__', cls)!r} is not a dataclass, pydantic model "
                "or msgspec Struct"
            )
        name = cls.__name__ if event_type is None else event_type
        if not isinstance(name, str) or not name:
            raise ValueError(f"event_type must be a non-empty str, got {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, got {version!r}")
        if cls in self._by_class:
            known, v = self._by_class[cls]
            raise ValueError(f"{cls.__qualname__} is already registered as {known} v{v}")
        versions = self._by_type.get(name, {})
        if version in versions:
            raise ValueError(
                f"{name} v{version} is already registered for {versions[version].__qualname__}"
            )
        _check_annotations(cls)
        self._by_type.setdefault(name, {})[version] = cls
        self._by_class[cls] = (name, version)
        return cls

    def upcast(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        """Register ``upcaster``: it turns the JSON object of ``event_type`` at
        ``from_version`` into the object of version ``from_version + 1``."""
        self._upcasters.add(event_type, from_version, upcaster)

    def encode(self, event: object) -> tuple[str, int, bytes]:
        """``(event_type, event_version, payload)`` for a registered event."""
        known = self._by_class.get(type(event))
        if known is None:
            raise CodecError(
                f"{type(event).__qualname__} is not a registered event class "
                "(JsonCodec.register it)"
            )
        event_type, version = known
        try:
            return event_type, version, dumps(to_json(event))
        except ValueProblem as exc:
            raise CodecError(str(exc), event_type=event_type, event_version=version) from None
        except RecursionError:
            raise CodecError(
                "the event is nested too deeply, or holds itself",
                event_type=event_type,
                event_version=version,
            ) from None

    def decode(self, event_type: str, event_version: int, payload: bytes) -> object:
        """The event a stored payload holds, upcast to the newest registered version."""
        try:
            return self._decode(event_type, event_version, payload)
        except RecursionError:
            raise CodecError(
                "the payload is nested too deeply to decode",
                event_type=event_type,
                event_version=event_version,
            ) from None

    def _decode(self, event_type: str, event_version: int, payload: bytes) -> object:
        versions = self._by_type.get(event_type)
        if not versions:
            raise CodecError(
                "unknown event type", event_type=event_type, event_version=event_version
            )
        newest = max(versions)
        if event_version not in versions and not 1 <= event_version < newest:
            raise CodecError(
                f"unknown event version (registered: {sorted(versions)})",
                event_type=event_type,
                event_version=event_version,
            )
        try:
            data = loads(payload)
        except ValueProblem as exc:
            raise CodecError(
                f"the payload is not standard JSON: {exc}",
                event_type=event_type,
                event_version=event_version,
            ) from None
        except (ValueError, TypeError) as exc:
            raise CodecError(
                f"the payload is not UTF-8 JSON: {exc}",
                event_type=event_type,
                event_version=event_version,
            ) from None
        version, data = self._upcasters.run(event_type, event_version, newest, data)
        cls = versions.get(version)
        if cls is None:
            raise CodecError(
                f"no class is registered for v{version} and no upcaster goes from "
                f"v{version} to v{version + 1}",
                event_type=event_type,
                event_version=event_version,
            )
        try:
            return from_json(cls, data)
        except ValueProblem as exc:
            raise CodecError(
                f"the payload does not fit {cls.__qualname__}"
                + (f" (upcast to v{version})" if version != event_version else "")
                + f": {exc}",
                event_type=event_type,
                event_version=event_version,
            ) from exc.__cause__  # the class's own exception, if it raised one


def _check_annotations(cls: type) -> None:
    """Decoding follows the field annotations: they must resolve now, and
    name types that come back as they went in."""
    try:
        if hasattr(cls, "__dataclass_fields__"):
            record_fields(cls)
        else:
            typing.get_type_hints(cls)
    except Exception as exc:
        raise TypeError(
            f"{cls.__qualname__}: its field annotations cannot be resolved ({exc}); "
            "define the types they name at module level"
        ) from None
    try:
        decoder(cls)
    except ValueProblem as exc:
        raise TypeError(f"{cls.__qualname__}: {exc}") from None
