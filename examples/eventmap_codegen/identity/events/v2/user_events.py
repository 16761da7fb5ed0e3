"""Registration, evolved: plans with a fee, a structured address, interests.

Old ``UserRegistered`` v1 events stay in the store and are still read as
:class:`identity.events.v1.user_events.UserRegistered`; new registrations are
written as this version.
"""

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID


class Plan(Enum):
    FREE = "free"
    PRO = "pro"
    TEAM = "team"


@dataclass(frozen=True)
class Address:
    """A value type: used as a field, so it is mapped as a nested object, not an event."""

    street: str
    city: str
    postal_code: str
    country: str = "DE"


@dataclass(frozen=True)
class UserRegistered:
    user_id: UUID
    email: str
    display_name: str
    registered_at: datetime
    plan: Plan
    monthly_fee: Decimal
    billing_address: Address | None = None
    birthday: date | None = None
    interests: tuple[str, ...] = ()
    previous_addresses: list[Address] = field(default_factory=list)
