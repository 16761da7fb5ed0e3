"""The user events as the first release of the service stored them."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class UserRegistered:
    user_id: UUID
    email: str
    name: str
    registered_at: datetime


@dataclass(frozen=True)
class UserEmailChanged:
    user_id: UUID
    old_email: str
    new_email: str


@dataclass(frozen=True)
class UserDeleted:
    user_id: UUID
    reason: str | None = None
