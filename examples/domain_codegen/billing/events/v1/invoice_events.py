"""The invoice events as the first release of the service stored them."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID


@dataclass(frozen=True)
class InvoiceOpened:
    invoice_id: UUID
    customer: str
    opened_at: datetime


@dataclass(frozen=True)
class LineAdded:
    description: str
    amount: Decimal


@dataclass(frozen=True)
class InvoicePaid:
    paid_at: datetime
