"""Shared types outside the version folders: never events themselves."""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum, auto


class Currency(StrEnum):
    EUR = auto()
    USD = auto()


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: Currency


class DomainEvent:
    """A marker base class without fields."""
