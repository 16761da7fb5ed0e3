# ruff: noqa: UP006, UP007, UP035, UP037, UP042, UP045, RUF036
# (The old spellings are the point: the generator must understand them.)
"""One event with every supported field type, spelled in every supported way."""

from __future__ import annotations

import datetime as dt
import decimal
import typing
import uuid
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Annotated, ClassVar, Dict, List, Optional, Union

from eventmap_fixtures.kitchen_sink import common

if TYPE_CHECKING:
    from eventmap_fixtures.kitchen_sink.v1.orders import Status


class Priority(Enum):
    LOW = auto()
    HIGH = auto()


class Tag(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Everything:
    text: str
    count: int
    ratio: float
    flag: bool
    blob: bytes
    at: dt.datetime
    day: dt.date
    ident: uuid.UUID
    amount: decimal.Decimal
    status: Status
    maybe: Optional[int]
    maybe_money: "common.Money | None"
    ints: List[int]
    nested: list[list[str]]
    frozen: tuple[decimal.Decimal, ...]
    wallet: Dict[str, common.Money]
    moments: list[Optional[dt.datetime]]
    tags: Annotated[list[Tag], "annotations are looked through"]
    either: Union[None, uuid.UUID] = None
    optional_lists: typing.Optional[list[dict[str, list[bool]]]] = None
    _: KW_ONLY
    priority: Priority = Priority.LOW
    days: tuple[dt.date, ...] = ()
    derived: int = field(init=False, default=0)
    LIMIT: ClassVar[int] = 10

    def __post_init__(self) -> None:
        self.derived = len(self.text)
