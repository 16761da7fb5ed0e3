"""Append mapped domain events to SQLite and read them back as domain objects.

Run from this directory with pupsourcing importable: ``python main.py``. The
store is an in-memory SQLite database unless ``$PUPSOURCING_DB`` names a
SQLite file.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from identity.events.v1 import user_events as v1
from identity.events.v2 import user_events as v2
from identity.persistence.event_mapping import (
    DomainEvent,
    event_type_of,
    from_es_events,
    to_es_events,
    to_user_registered_v2,
)

from pupsourcing import ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///:memory:"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")

CONTEXT = "Identity"
ADA = UUID("00000000-0000-4000-8000-00000000ada0")
GRACE = UUID("00000000-0000-4000-8000-0000000006ac")


def describe(event: DomainEvent) -> str:
    match event:
        case v1.UserRegistered(name=name, email=email):
            return f"{name} registered as {email} (v1: no plan yet)"
        case v1.UserEmailChanged(old_email=old, new_email=new):
            return f"email changed from {old} to {new}"
        case v1.UserDeleted(reason=reason):
            return f"deleted ({reason or 'no reason given'})"
        case v2.UserRegistered():
            address = event.billing_address
            city = address.city if address else "no address"
            return (
                f"{event.display_name} registered on the {event.plan.value} plan at "
                f"{event.monthly_fee} a month, billed in {city}"
            )


def main() -> None:
    store = SQLiteStore()
    db = DB.connect()
    store.create_schema(db)

    # Ada registered when the service still wrote version 1 events.
    ada: list[DomainEvent] = [
        v1.UserRegistered(ADA, "ada@example.org", "Ada", datetime(2023, 5, 1, 9, 30, tzinfo=UTC)),
        v1.UserEmailChanged(ADA, "ada@example.org", "ada@lovelace.dev"),
    ]
    store.append(db, ExpectedVersion.no_stream(), to_es_events(CONTEXT, "User", str(ADA), ada))

    # Grace registers today, as version 2, with a per-type helper and tracing IDs.
    grace = v2.UserRegistered(
        user_id=GRACE,
        email="grace@example.org",
        display_name="Grace",
        registered_at=datetime(2024, 12, 9, 14, 5, 30, 250_000, tzinfo=UTC),
        plan=v2.Plan.PRO,
        monthly_fee=Decimal("12.50"),
        billing_address=v2.Address("1 Navy Way", "Arlington", "22202", country="US"),
        birthday=date(1906, 12, 9),
        interests=("compilers", "COBOL"),
    )
    registered = to_user_registered_v2(
        CONTEXT, "User", str(GRACE), grace, correlation_id="signup-42"
    )
    store.append(db, ExpectedVersion.no_stream(), [registered])
    db.commit()

    stored = store.read_events(db, 0, 100)
    events = from_es_events(stored)
    for persisted, event in zip(stored, events, strict=True):
        print(
            f"#{persisted.global_position} {event_type_of(event)} "
            f"v{persisted.event_version}: {describe(event)}"
        )
    print("round trip exact:", events == [*ada, grace])
    db.close()


if __name__ == "__main__":
    main()
