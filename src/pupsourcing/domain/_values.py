"""Python values to JSON and back, guided by type annotations.

Encoding looks at the value; decoding at the declared type, so a value comes
back as the same type it went in as: datetimes (with their UTC offset), dates
and times are ISO 8601 strings, UUIDs and Decimals strings, bytes base64,
enums their values, dataclasses objects, tuples, lists and sets arrays,
dicts objects (keys as strings). pydantic models and msgspec Structs are
supported when those packages are installed (they encode and validate
themselves).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID


class ValueProblem(Exception):
    """A value does not fit: ``path`` says where (``""`` for the top)."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"field {self.path!r}: {self.reason}" if self.path else self.reason


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def dumps(value: object) -> bytes:
    """Compact, deterministic JSON (sorted keys, UTF-8) of plain JSON values."""
    try:
        text = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False
        )
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueProblem("text with a lone surrogate cannot be encoded as UTF-8") from None
    except ValueError as exc:  # a NaN that :func:`to_json` did not see
        raise ValueProblem(f"not standard JSON: {exc}") from None


def loads(data: bytes) -> Any:
    """Standard JSON only: a :class:`ValueProblem` for ``NaN``, ``Infinity``
    and numbers too large for a float, which :func:`dumps` never writes.
    ``ValueError`` when ``data`` is not UTF-8 JSON at all."""
    return json.loads(data, parse_constant=_non_finite, parse_float=_finite_float)


def _non_finite(text: str) -> float:
    raise ValueProblem(f"{text} is not a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueProblem(f"{text} is not a finite number")
    return number


# -- pydantic and msgspec, only when the application imported them ------------


def is_pydantic_class(cls: object) -> bool:
    module = sys.modules.get("pydantic")
    return module is not None and isinstance(cls, type) and issubclass(cls, module.BaseModel)


def is_msgspec_class(cls: object) -> bool:
    module = sys.modules.get("msgspec")
    return module is not None and isinstance(cls, type) and issubclass(cls, module.Struct)


def is_record_class(cls: object) -> bool:
    """A class whose instances encode as a JSON object of fields."""
    return (
        (isinstance(cls, type) and dataclasses.is_dataclass(cls))
        or is_pydantic_class(cls)
        or is_msgspec_class(cls)
    )


# -- encoding -----------------------------------------------------------------


def to_json(value: object, path: str = "") -> Any:
    """``value`` as plain JSON values (dicts, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value, path)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem(f"{value!r} is not a finite number", path)
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    cls = type(value)
    if dataclasses.is_dataclass(cls):
        return {
            f.name: to_json(getattr(value, f.name), _join(path, f.name))
            for f in dataclasses.fields(cls)
            if f.init
        }
    if is_pydantic_class(cls) or is_msgspec_class(cls):
        return _model_to_json(value, path)
    if isinstance(value, list | tuple):
        return [to_json(item, _join(path, index)) for index, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [to_json(item, path) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, Mapping):
        return {_key_to_json(k, path): to_json(v, _join(path, str(k))) for k, v in value.items()}
    raise ValueProblem(f"cannot encode a value of type {cls.__qualname__}", path)


def _model_to_json(value: Any, path: str) -> Any:
    """A pydantic model or msgspec Struct, encoded by its own library."""
    try:
        if is_pydantic_class(type(value)):
            data = value.model_dump(mode="json")
        else:
            data = sys.modules["msgspec"].to_builtins(value)
    except (TypeError, ValueError) as exc:  # the libraries' serialization errors
        raise ValueProblem(f"cannot encode {type(value).__qualname__}: {exc}", path) from None
    return to_json(data, path)  # plain values already: this checks their floats


def _key_to_json(key: object, path: str) -> str:
    encoded = to_json(key, path)
    if isinstance(encoded, str):
        return encoded
    if isinstance(encoded, int) and not isinstance(encoded, bool):
        return str(encoded)
    raise ValueProblem(f"cannot use a {type(key).__qualname__} as an object key", path)


# -- decoding -----------------------------------------------------------------


@functools.cache
def record_fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """A dataclass's init fields: name -> (resolved type, whether required)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (
            hints.get(f.name, Any),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.init
    }


def _problem(expected: str, value: object, path: str) -> ValueProblem:
    got = "null" if value is None else type(value).__name__
    return ValueProblem(f"expected {expected}, got {got}", path)


def _text(value: object, what: str, path: str) -> str:
    if not isinstance(value, str):
        raise _problem(what, value, path)
    return value


def _parsed(parse: Callable[[str], Any], value: object, what: str, path: str) -> Any:
    text = _text(value, what, path)
    try:
        return parse(text)
    except (ValueError, InvalidOperation):
        raise ValueProblem(f"{text!r} is not {what}", path) from None


def _bytes(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


_SCALARS: dict[type, Callable[[object, str], Any]] = {
    datetime: lambda v, p: _parsed(datetime.fromisoformat, v, "an ISO 8601 datetime", p),
    date: lambda v, p: _parsed(date.fromisoformat, v, "an ISO 8601 date", p),
    time: lambda v, p: _parsed(time.fromisoformat, v, "an ISO 8601 time", p),
    UUID: lambda v, p: _parsed(UUID, v, "a UUID", p),
    Decimal: lambda v, p: _parsed(Decimal, v, "a decimal number", p),
    bytes: lambda v, p: _parsed(_bytes, v, "base64", p),
}


def from_json(tp: Any, value: object, path: str = "") -> Any:
    """The value of type ``tp`` that :func:`to_json` encoded as ``value``."""
    if tp is Any or tp is object:
        return value
    if isinstance(tp, typing.NewType):
        return from_json(tp.__supertype__, value, path)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return from_json(typing.get_args(tp)[0], value, path)
    if origin is typing.Union or origin is types.UnionType:
        return _union(typing.get_args(tp), value, path)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueProblem(f"{value!r} is not one of {typing.get_args(tp)}", path)
        return value
    if tp is None or tp is type(None):
        if value is not None:
            raise _problem("null", value, path)
        return None
    if origin is not None:
        return _container(origin, typing.get_args(tp), value, path)
    if not isinstance(tp, type):
        raise ValueProblem(f"cannot decode the type {tp!r}", path)
    if issubclass(tp, enum.Enum):
        return _enum(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise _problem("a bool", value, path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _problem("an int", value, path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _problem("a number", value, path)
        return float(value)
    if tp is str:
        return _text(value, "a string", path)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar(value, path)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path)
    if is_pydantic_class(tp) or is_msgspec_class(tp):
        return _built(tp, path, lambda: _model(tp, value, path))
    if issubclass(tp, tuple) and hasattr(tp, "_fields"):
        return _named_tuple(tp, value, path)
    if tp in (list, tuple, set, frozenset, dict):
        return _container(tp, (), value, path)
    raise ValueProblem(f"cannot decode the type {tp.__qualname__}", path)


def _encodes_to(decoded: object, value: object) -> bool:
    """Whether :func:`to_json` gives ``value`` back for ``decoded`` (``3`` is
    not ``3.0``, nor ``"2024-01-01"`` ``"2024-01-01T00:00:00"``)."""
    try:
        return dumps(to_json(decoded)) == dumps(value)
    except ValueProblem:
        return False


def _enum(tp: type[enum.Enum], value: object, path: str) -> enum.Enum:
    try:
        return tp(value)
    except (ValueError, TypeError):  # a value JSON changed: a Decimal, a tuple, ...
        for member in tp:
            if _encodes_to(member, value):
                return member
    raise ValueProblem(f"{value!r} is not a {tp.__qualname__}", path)


def _union(arms: tuple[Any, ...], value: object, path: str) -> Any:
    """The first arm whose value encodes back to ``value`` exactly, else the
    first that decodes it at all (``float | int`` keeps an int an int)."""
    if value is None and type(None) in arms:
        return None
    arms = tuple(arm for arm in arms if arm is not type(None))
    problems, fits = [], []
    for arm in arms:
        try:
            decoded = from_json(arm, value, path)
        except ValueProblem as exc:
            problems.append(exc.reason)
            continue
        if len(arms) == 1 or _encodes_to(decoded, value):
            return decoded
        fits.append(decoded)
    if fits:
        return fits[0]
    raise ValueProblem("; ".join(problems) or "no type fits", path)


def _container(origin: Any, args: tuple[Any, ...], value: object, path: str) -> Any:
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        if not isinstance(value, dict):
            raise _problem("an object", value, path)
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        return {
            _key_from_json(key_type, k, path): from_json(value_type, v, _join(path, k))
            for k, v in value.items()
        }
    if not isinstance(value, list):
        raise _problem("an array", value, path)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ValueProblem(f"expected {len(args)} items, got {len(value)}", path)
        return tuple(
            from_json(t, v, _join(path, i))
            for i, (t, v) in enumerate(zip(args, value, strict=True))
        )
    item_type = args[0] if args else Any
    items = [from_json(item_type, v, _join(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        return tuple(items)
    if origin in (set, frozenset):
        return origin(items)
    if origin in (list, typing.Sequence) or origin.__module__ == "collections.abc":
        return items
    raise ValueProblem(f"cannot decode the container type {origin!r}", path)


def _named_tuple(cls: Any, value: object, path: str) -> Any:
    """A NamedTuple (or namedtuple), which :func:`to_json` wrote as an array."""
    names: tuple[str, ...] = cls._fields
    if not isinstance(value, list):
        raise _problem("an array", value, path)
    if len(value) != len(names):
        raise ValueProblem(f"expected {len(names)} items, got {len(value)}", path)
    hints = typing.get_type_hints(cls)
    items = zip(names, value, strict=True)
    args = [from_json(hints.get(n, Any), v, _join(path, n)) for n, v in items]
    return _built(cls, path, lambda: cls(*args))


def _key_from_json(tp: Any, key: str, path: str) -> Any:
    if tp is int:
        try:
            return int(key)
        except ValueError:
            raise ValueProblem(f"object key {key!r} is not an int", path) from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if _key_to_json(member, path) == key:
                return member
        raise ValueProblem(f"object key {key!r} is not a {tp.__qualname__}", path)
    return from_json(tp, key, path)


def _dataclass(cls: type, value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise _problem(f"an object for {cls.__qualname__}", value, path)
    fields = record_fields(cls)
    extra = sorted(set(value) - set(fields))
    if extra:
        raise ValueProblem(f"unexpected field(s) {', '.join(map(repr, extra))}", path)
    missing = [name for name, (_, required) in fields.items() if required and name not in value]
    if missing:
        raise ValueProblem(f"missing field(s) {', '.join(map(repr, missing))}", path)
    kwargs = {
        name: from_json(fields[name][0], item, _join(path, name)) for name, item in value.items()
    }
    return _built(cls, path, lambda: cls(**kwargs))


def _model(cls: Any, value: object, path: str) -> Any:
    """A pydantic model or msgspec Struct, validated by its own library."""
    if is_pydantic_class(cls):
        try:
            return cls.model_validate(value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ValueProblem(f"does not fit {cls.__qualname__}: {exc}", path) from None
    msgspec = sys.modules["msgspec"]
    try:
        return msgspec.convert(value, cls)
    except msgspec.ValidationError as exc:
        raise ValueProblem(f"does not fit {cls.__qualname__}: {exc}", path) from None


def _built(cls: type, path: str, make: Callable[[], Any]) -> Any:
    """``make()``, an instance of ``cls``: what its own checks raise (a
    ``__post_init__``'s ``AssertionError``, say) becomes a :class:`ValueProblem`
    naming ``cls``, caused by that exception."""
    try:
        return make()
    except ValueProblem:
        raise
    except Exception as exc:
        reason = f"{cls.__qualname__} rejected the value: {type(exc).__name__}: {exc}"
        raise ValueProblem(reason, path) from exc
