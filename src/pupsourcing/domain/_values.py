"""Python values to JSON and back, guided by type annotations.

Encoding looks at the value; decoding at the declared type, so a value comes
back as the same type it went in as: datetimes (with their UTC offset), dates
and times are ISO 8601 strings, UUIDs and Decimals strings, bytes base64,
enums their values, dataclasses objects, tuples, lists and sets arrays,
dicts objects (keys as strings, ints as their digits). Each type's decoder
is built once (:func:`decoder`), which refuses a type that would not come
back as it went in. pydantic models and msgspec Structs are
supported when those packages are installed (they encode and validate
themselves).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import functools
import json
import math
import sys
import threading
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


def utf8_text(value: str, path: str) -> str:
    """``value``, unless it holds a lone surrogate (which UTF-8 cannot hold)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueProblem(
                f"text with a lone surrogate ({value[exc.start]!r} at {exc.start}) cannot be "
                "encoded as UTF-8",
                path,
            ) from None
    return value


def to_json(value: object, path: str = "") -> Any:
    """``value`` as plain JSON values (dicts, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return utf8_text(value, path)
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


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _problem("a bool", value, path)
    return value


def _int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem("an int", value, path)
    return value


def _float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem("a number", value, path)
    return float(value)


Decode = Callable[[object, str], Any]
"""Decodes one JSON value (found at a path) as the type it was built for."""

_SCALARS: dict[type, Decode] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: lambda v, p: _text(v, "a string", p),
    datetime: lambda v, p: _parsed(datetime.fromisoformat, v, "an ISO 8601 datetime", p),
    date: lambda v, p: _parsed(date.fromisoformat, v, "an ISO 8601 date", p),
    time: lambda v, p: _parsed(time.fromisoformat, v, "an ISO 8601 time", p),
    UUID: lambda v, p: _parsed(UUID, v, "a UUID", p),
    Decimal: lambda v, p: _parsed(Decimal, v, "a decimal number", p),
    bytes: lambda v, p: b"" if v is None else _parsed(_bytes, v, "base64", p),
}

_OPEN = {str: "string", bytes: "string", int: "int", float: "float", bool: "bool"}
"""Scalars that decode every JSON value of a kind exactly (any string is a
str, and nearly any is base64), so no other type of that kind can share a
union with them."""

_decoders: dict[Any, Decode] = {}
_staged: dict[Any, Decode | None] = {}  # being built (``None`` until done), under the lock
_building = threading.RLock()


def from_json(tp: Any, value: object, path: str = "") -> Any:
    """The value of type ``tp`` that :func:`to_json` encoded as ``value``."""
    return decoder(tp, path)(value, path)


def decoder(tp: Any, path: str = "") -> Decode:
    """The decoder of ``tp``, built once. A :class:`ValueProblem` naming the
    field (under ``path``) when ``tp`` holds a type that cannot come back
    as it went in: ``JsonCodec.register`` builds it, so nothing is written."""
    try:
        return _decoders[tp]
    except KeyError:
        pass
    except TypeError:  # unhashable (Annotated metadata may be): not kept
        return _build(tp, path)
    with _building:
        if tp in _decoders:
            return _decoders[tp]
        if tp in _staged:  # a dataclass that holds itself: look it up when decoding
            return _staged[tp] or (lambda value, at: _decoders[tp](value, at))
        outermost = not _staged
        _staged[tp] = None
        try:
            _staged[tp] = built = _build(tp, path)
            if outermost:  # every type it holds was built too: publish them
                _decoders.update(typing.cast(dict[Any, Decode], _staged))
            return built
        finally:
            if outermost:
                _staged.clear()


def _build(tp: Any, path: str) -> Decode:
    if tp is Any or tp is object:
        return lambda value, _: value
    if isinstance(tp, typing.NewType):
        return decoder(tp.__supertype__, path)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return decoder(typing.get_args(tp)[0], path)
    if origin is typing.Union or origin is types.UnionType:
        return _union_decoder(typing.get_args(tp), path)
    if origin is typing.Literal:
        return functools.partial(_literal, typing.get_args(tp))
    if tp is None or tp is type(None):
        return _null
    if origin is not None:
        return _container_decoder(origin, typing.get_args(tp), path)
    if not isinstance(tp, type):
        raise ValueProblem(f"cannot decode the type {tp!r}", path)
    if issubclass(tp, enum.Enum):
        return functools.partial(_enum, tp)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar
    if dataclasses.is_dataclass(tp):
        fields = {
            name: (decoder(field_type, _join(path, name)), required)
            for name, (field_type, required) in record_fields(tp).items()
        }
        return functools.partial(_dataclass, tp, fields)
    if is_pydantic_class(tp) or is_msgspec_class(tp):
        return lambda value, at: _built(tp, at, lambda: _model(tp, value, at))
    if issubclass(tp, tuple) and hasattr(tp, "_fields"):
        return _named_tuple_decoder(tp, path)
    if tp in (list, tuple, set, frozenset) or issubclass(tp, dict):
        return _container_decoder(tp, (), path)
    raise ValueProblem(f"cannot decode the type {tp.__qualname__}", path)


def _null(value: object, path: str) -> None:
    if value is not None:
        raise _problem("null", value, path)


def _literal(allowed: tuple[Any, ...], value: object, path: str) -> Any:
    if value not in allowed:
        raise ValueProblem(f"{value!r} is not one of {allowed}", path)
    return value


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


# -- what JSON a type is written as, for unions and object keys ---------------


@dataclasses.dataclass(frozen=True)
class _Shape:
    kinds: frozenset[str]
    """The kinds of JSON value (``"string"``, ``"int"``, ...) it is written as."""
    whole: frozenset[str] = frozenset()
    """The kinds of which it decodes every value exactly."""
    types: frozenset[Any] = frozenset()
    """The Python types it decodes to."""


def _kind(value: object) -> str:
    """The kind of a plain JSON value."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "array"}.get(
        type(value), "object"
    )


def _shape(tp: Any) -> _Shape | None:
    """How values of ``tp`` are written; ``None`` for ``Any`` (anything)."""
    if tp is Any or tp is object:
        return None
    if isinstance(tp, typing.NewType):
        return _shape(tp.__supertype__)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _shape(args[0])
    if origin is typing.Union or origin is types.UnionType:
        shapes = [_shape(arm) for arm in args]
        if any(shape is None for shape in shapes):
            return None
        kinds, whole, types_ = zip(
            *((s.kinds, s.whole, s.types) for s in shapes if s is not None), strict=True
        )
        return _Shape(
            frozenset().union(*kinds), frozenset().union(*whole), frozenset().union(*types_)
        )
    if origin is typing.Literal:
        return _Shape(frozenset(_kind(to_json(v)) for v in args), types=frozenset(map(type, args)))
    if tp is None or tp is type(None):
        return _Shape(frozenset({"null"}), frozenset({"null"}), frozenset({type(None)}))
    cls = tp if origin is None else origin
    if not isinstance(cls, type):
        return None
    if issubclass(cls, enum.Enum):
        return _Shape(frozenset(_kind(to_json(m)) for m in cls), types=frozenset({cls}))
    if cls in _OPEN:
        kind = frozenset({_OPEN[cls]})
        return _Shape(kind, kind, frozenset({cls}))
    if cls in _SCALARS:
        return _Shape(frozenset({"string"}), types=frozenset({cls}))
    record = is_record_class(cls) or issubclass(cls, Mapping)
    return _Shape(frozenset({"object" if record else "array"}), types=frozenset({cls}))


def _type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _union_decoder(arms: tuple[Any, ...], path: str) -> Decode:
    """Decodes to the arm a value went in as, so no two arms may be written as
    the same JSON where one of them takes every such value (``str | UUID``:
    a UUID is a string, and any string is a str)."""
    nullable = type(None) in arms
    arms = tuple(arm for arm in arms if arm is not type(None))
    shapes = [_shape(arm) for arm in arms]
    for arm, shape in zip(arms, shapes, strict=True):
        for other, other_shape in zip(arms, shapes, strict=True):
            if shape is None or other_shape is None or other is arm:
                continue
            clash = shape.whole & other_shape.kinds
            if clash and not other_shape.types <= shape.types:
                raise ValueProblem(
                    f"a union of {_type_name(arm)} and {_type_name(other)} cannot be told "
                    f"apart in JSON: a {_type_name(other)} is written as a {min(clash)}, and "
                    f"any {min(clash)} reads as a {_type_name(arm)}; use one type (or a "
                    "dataclass per case)",
                    path,
                )
    decoders = tuple(decoder(arm, path) for arm in arms)
    return functools.partial(_union, nullable, decoders)


def _union(nullable: bool, arms: tuple[Decode, ...], value: object, path: str) -> Any:
    """The first arm whose value encodes back to ``value`` exactly, else the
    first that decodes it at all (``float | int`` keeps an int an int)."""
    if value is None and nullable:
        return None
    problems, fits = [], []
    for arm in arms:
        try:
            decoded = arm(value, path)
        except ValueProblem as exc:
            problems.append(exc.reason)
            continue
        if len(arms) == 1 or _encodes_to(decoded, value):
            return decoded
        fits.append(decoded)
    if fits:
        return fits[0]
    raise ValueProblem("; ".join(problems) or "no type fits", path)


# -- containers ---------------------------------------------------------------


def _container_decoder(origin: Any, args: tuple[Any, ...], path: str) -> Decode:
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return _mapping_decoder(origin, args, path)
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = tuple(decoder(t, _join(path, i)) for i, t in enumerate(args))
        return functools.partial(_fixed_tuple, items)
    if origin in (list, tuple, set, frozenset) or origin.__module__ == "collections.abc":
        make = origin if origin in (tuple, set, frozenset) else list
        return functools.partial(_items, make, decoder(args[0] if args else Any, path))
    raise ValueProblem(f"cannot decode the container type {origin!r}", path)


_UNORDERED = {
    collections.OrderedDict: "an OrderedDict's order does not come back (JSON objects are "
    "written with sorted keys): use a list of pairs",
    collections.defaultdict: "a defaultdict's default_factory is not stored, so it does not "
    "come back: use a dict",
}


def _mapping_decoder(origin: type, args: tuple[Any, ...], path: str) -> Decode:
    """``dict``s, abstract mappings (as ``dict``) and other ``dict`` subclasses
    (``Counter``), whose keys are JSON strings: strings, or ints as digits."""
    for cls, reason in _UNORDERED.items():
        if issubclass(origin, cls):
            raise ValueProblem(reason, path)
    if origin.__module__ != "collections.abc" and not issubclass(origin, dict):
        raise ValueProblem(f"cannot decode the container type {origin!r}", path)
    key_type = args[0] if args else Any
    shape = _shape(key_type)
    kinds = frozenset({"string"}) if shape is None else shape.kinds
    if not kinds <= {"string", "int"}:
        raise ValueProblem(
            f"a {_type_name(key_type)} cannot be an object key (JSON keys are strings)", path
        )
    keys = decoder(key_type, path)
    values = decoder(args[1] if len(args) == 2 else Any, path)
    make = dict if origin.__module__ == "collections.abc" else origin
    return functools.partial(_mapping, make, keys, kinds, values)


def _mapping(
    make: Callable[[dict[Any, Any]], Any],
    keys: Decode,
    kinds: frozenset[str],
    values: Decode,
    value: object,
    path: str,
) -> Any:
    if value is None:  # Go's encoding/json writes a nil map as null
        return make({})
    if not isinstance(value, dict):
        raise _problem("an object", value, path)
    return make({_key(keys, kinds, k, path): values(v, _join(path, k)) for k, v in value.items()})


def _key(keys: Decode, kinds: frozenset[str], key: str, path: str) -> Any:
    """An object key: the string itself, or the int its digits write."""
    problem = None
    if "string" in kinds:
        try:
            return keys(key, path)
        except ValueProblem as exc:
            problem = exc
    if "int" in kinds:
        try:
            return keys(int(key), path)
        except ValueError:
            pass
        except ValueProblem as exc:
            problem = problem or exc
    raise ValueProblem(f"object key {key!r}: {problem.reason if problem else 'not an int'}", path)


def _fixed_tuple(items: tuple[Decode, ...], value: object, path: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise _problem("an array", value, path)
    if len(items) != len(value):
        raise ValueProblem(f"expected {len(items)} items, got {len(value)}", path)
    return tuple(
        item(v, _join(path, i)) for i, (item, v) in enumerate(zip(items, value, strict=True))
    )


def _items(make: Callable[[list[Any]], Any], item: Decode, value: object, path: str) -> Any:
    if value is None:  # Go's encoding/json writes a nil slice as null
        return make([])
    if not isinstance(value, list):
        raise _problem("an array", value, path)
    return make([item(v, _join(path, i)) for i, v in enumerate(value)])


def _named_tuple_decoder(cls: Any, path: str) -> Decode:
    """A NamedTuple (or namedtuple), which :func:`to_json` wrote as an array."""
    hints = typing.get_type_hints(cls)
    items = tuple((n, decoder(hints.get(n, Any), _join(path, n))) for n in cls._fields)
    return functools.partial(_named_tuple, cls, items)


def _named_tuple(cls: Any, items: tuple[tuple[str, Decode], ...], value: object, path: str) -> Any:
    if not isinstance(value, list):
        raise _problem("an array", value, path)
    if len(value) != len(items):
        raise ValueProblem(f"expected {len(items)} items, got {len(value)}", path)
    args = [item(v, _join(path, n)) for (n, item), v in zip(items, value, strict=True)]
    return _built(cls, path, lambda: cls(*args))


# -- records ------------------------------------------------------------------


def _dataclass(cls: type, fields: dict[str, tuple[Decode, bool]], value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise _problem(f"an object for {cls.__qualname__}", value, path)
    extra = sorted(set(value) - set(fields))
    if extra:
        raise ValueProblem(f"unexpected field(s) {', '.join(map(repr, extra))}", path)
    missing = [name for name, (_, required) in fields.items() if required and name not in value]
    if missing:
        raise ValueProblem(f"missing field(s) {', '.join(map(repr, missing))}", path)
    kwargs = {name: fields[name][0](item, _join(path, name)) for name, item in value.items()}
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
