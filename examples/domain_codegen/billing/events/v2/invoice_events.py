"""Version 2: a line has a unit price and a quantity."""

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class LineAdded:
    description: str
    unit_price: Decimal
    quantity: int
