"""What the scanner found in the input directory: event classes and field types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScalarKind = Literal["str", "int", "float", "bool", "bytes", "datetime", "date", "uuid", "decimal"]


@dataclass(frozen=True, order=True)
class ClassRef:
    """A class defined (not merely imported) in a module of the input directory."""

    module: str  # dotted import path of the defining module
    name: str
    version: int | None  # the vN folder the module is in; None outside version folders


@dataclass(frozen=True)
class Scalar:
    kind: ScalarKind


@dataclass(frozen=True)
class EnumType:
    ref: ClassRef


@dataclass(frozen=True)
class DataType:
    ref: ClassRef


@dataclass(frozen=True)
class ListType:
    item: FieldType


@dataclass(frozen=True)
class TupleType:
    item: FieldType


@dataclass(frozen=True)
class DictType:
    value: FieldType


@dataclass(frozen=True)
class OptionalType:
    inner: FieldType


FieldType = Scalar | EnumType | DataType | ListType | TupleType | DictType | OptionalType


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType


@dataclass(frozen=True)
class DataClassInfo:
    ref: ClassRef
    fields: tuple[Field, ...]
    where: str  # "file:line" of the class, for messages


@dataclass(frozen=True)
class EnumInfo:
    ref: ClassRef
    value_kind: Literal["str", "int"]
    where: str


@dataclass(frozen=True)
class EventInfo:
    """One mapped event class: ``event_type`` is the class name, the version its folder."""

    ref: ClassRef
    version: int

    @property
    def event_type(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class Model:
    package: str
    events: tuple[EventInfo, ...]  # sorted by (event_type, version)
    dataclasses: dict[ClassRef, DataClassInfo]  # events and the value types they use
    enums: dict[ClassRef, EnumInfo]
    versions: tuple[int, ...]  # the version folders found
