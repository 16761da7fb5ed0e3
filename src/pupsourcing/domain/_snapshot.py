"""Snapshot state to JSON bytes and back, types included.

A snapshot has no annotated class to decode against, so each value that JSON
cannot hold by itself is written as a one-tag object (``{"$uuid": "..."}``,
``{"$dataclass": "module:Class", "fields": {...}}``, ...) with the same
rules as :class:`~pupsourcing.domain.JsonCodec` for the value inside. A
plain dict whose keys are all strings not starting with ``$`` stays a plain
object; any other dict becomes ``{"$dict": [[key, value], ...]}``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import sys
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from pupsourcing.domain._errors import CodecError
from pupsourcing.domain._values import (
    ValueProblem,
    dumps,
    from_json,
    is_msgspec_class,
    is_pydantic_class,
    loads,
    to_json,
    utf8_text,
)

_SCALARS: dict[str, tuple[type, Callable[[str], Any]]] = {
    "$datetime": (datetime, datetime.fromisoformat),
    "$date": (date, date.fromisoformat),
    "$time": (time, time.fromisoformat),
    "$uuid": (UUID, UUID),
    "$decimal": (Decimal, Decimal),
    "$bytes": (bytes, lambda text: base64.b64decode(text, validate=True)),
}


def encode_state(state: object, owner: str) -> bytes:
    """``state`` (the dict of ``owner.snapshot_state()``) as JSON bytes;
    :class:`CodecError` naming the attribute when a value cannot be encoded."""
    if not isinstance(state, dict):
        raise CodecError(f"{owner}.snapshot_state() must return a dict, got {type(state).__name__}")
    try:
        return dumps({"$state": {str(k): _attribute(v, str(k)) for k, v in state.items()}})
    except ValueProblem as exc:
        raise CodecError(f"{owner}.snapshot_state(): cannot store {exc}") from None


def _attribute(value: object, name: str) -> Any:
    try:
        return _tagged(value, name)
    except RecursionError:
        raise ValueProblem("it is nested too deeply, or holds itself", name) from None


def decode_state(data: bytes) -> dict[str, Any]:
    """The state dict :func:`encode_state` wrote."""
    try:
        wrapper = loads(data)
        state = wrapper["$state"]
        return {name: _untagged(value, name) for name, value in state.items()}
    except ValueProblem as exc:
        raise CodecError(f"snapshot state: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CodecError(f"snapshot state is not readable: {exc!r}") from None


def _class_ref(cls: type, path: str) -> str:
    ref = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__ or _resolve(ref, path) is not cls:
        raise ValueProblem(
            f"class {cls.__qualname__} cannot be found again by its name (define it at "
            "module level)",
            path,
        )
    return ref


def _resolve(ref: str, path: str, kind: str = "a class") -> Any:
    """The class ``ref`` names; a :class:`ValueProblem` unless it is of
    ``kind`` (a stored snapshot must not make us call any other callable)
    and in a module the program has imported (nor import one: importing
    runs its code)."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise ValueProblem(f"class {ref}: module {module_name} is not imported", path)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueProblem(f"class {ref} no longer exists", path) from None
    if not _KINDS[kind](obj):
        raise ValueProblem(f"{ref} is not {kind}", path)
    return obj


_KINDS: dict[str, Callable[[Any], bool]] = {
    "a class": lambda obj: isinstance(obj, type),
    "an Enum": lambda obj: isinstance(obj, type) and issubclass(obj, enum.Enum),
    "a dataclass": lambda obj: isinstance(obj, type) and dataclasses.is_dataclass(obj),
    "a pydantic model or msgspec Struct": lambda obj: (
        is_pydantic_class(obj) or is_msgspec_class(obj)
    ),
}


def _tagged(value: object, path: str) -> Any:
    if isinstance(value, enum.Enum):  # before str: a StrEnum is a str too
        ref = _class_ref(type(value), path)
        return {"$enum": ref, "value": _tagged(value.value, path)}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return utf8_text(value, path)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem(f"{value!r} is not a finite number", path)
        return value
    for tag, (cls, _) in _SCALARS.items():
        if isinstance(value, cls) and not (cls is date and isinstance(value, datetime)):
            return {tag: to_json(value, path)}
    if isinstance(value, list):
        return [_tagged(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"$tuple": [_tagged(item, f"{path}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, set | frozenset):
        items = [_tagged(item, path) for item in value]
        items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        return {"$set" if isinstance(value, set) else "$frozenset": items}
    if isinstance(value, dict):
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: _tagged(v, f"{path}.{k}") for k, v in value.items()}
        return {"$dict": [[_tagged(k, path), _tagged(v, f"{path}.{k}")] for k, v in value.items()]}
    cls = type(value)
    if dataclasses.is_dataclass(cls):
        fields = {
            f.name: _tagged(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(cls)
            if f.init
        }
        return {"$dataclass": _class_ref(cls, path), "fields": fields}
    if is_pydantic_class(cls) or is_msgspec_class(cls):
        return {"$model": _class_ref(cls, path), "data": to_json(value, path)}
    raise ValueProblem(f"a {cls.__qualname__} is not JSON-encodable", path)


def _untagged(value: Any, path: str) -> Any:
    if isinstance(value, list):
        return [_untagged(item, path) for item in value]
    if not isinstance(value, dict):
        return value
    if not any(k.startswith("$") for k in value):
        return {k: _untagged(v, f"{path}.{k}") for k, v in value.items()}
    for tag, (cls, _) in _SCALARS.items():
        if tag in value:
            return from_json(cls, value[tag], path)
    if "$tuple" in value:
        return tuple(_untagged(item, path) for item in value["$tuple"])
    if "$set" in value:
        return {_untagged(item, path) for item in value["$set"]}
    if "$frozenset" in value:
        return frozenset(_untagged(item, path) for item in value["$frozenset"])
    if "$dict" in value:
        return {_untagged(k, path): _untagged(v, path) for k, v in value["$dict"]}
    if "$enum" in value:
        return _resolve(value["$enum"], path, "an Enum")(_untagged(value["value"], path))
    if "$dataclass" in value:
        cls = _resolve(value["$dataclass"], path, "a dataclass")
        return cls(**{k: _untagged(v, f"{path}.{k}") for k, v in value["fields"].items()})
    if "$model" in value:
        model = _resolve(value["$model"], path, "a pydantic model or msgspec Struct")
        return from_json(model, value["data"], path)
    raise ValueProblem(f"unknown tag in {sorted(value)}", path)
