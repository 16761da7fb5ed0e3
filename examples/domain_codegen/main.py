"""An aggregate whose events are typed, versioned dataclasses, saved and
loaded by a Repository through the codec eventmap-gen generated (``CODEC``).

Run from this directory: ``python main.py``. The database is
``$PUPSOURCING_DB`` (any pupsourcing URL), by default a SQLite file in a
temporary directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `billing` from any directory

from billing.events.v1 import invoice_events as v1
from billing.events.v2 import invoice_events as v2
from billing.persistence.event_mapping import CODEC, to_es_events

from pupsourcing import ExpectedVersion
from pupsourcing.domain import Aggregate, Repository
from pupsourcing.urls import database

INVOICE = UUID("00000000-0000-4000-8000-00000000beef")


class InvoiceError(Exception):
    pass


class Invoice(Aggregate):
    bounded_context = "Billing"
    aggregate_type = "Invoice"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.customer = ""
        self.lines: list[tuple[str, Decimal]] = []
        self.total = Decimal("0.00")
        self.paid_at: datetime | None = None

    def apply(self, event: object) -> None:
        match event:
            case v1.InvoiceOpened(customer=customer):
                self.customer = customer
            case v1.LineAdded(description=text, amount=amount):  # stored by release 1
                self.lines.append((text, amount))
                self.total += amount
            case v2.LineAdded(description=text, unit_price=price, quantity=quantity):
                self.lines.append((f"{quantity} x {text}", price * quantity))
                self.total += price * quantity
            case v1.InvoicePaid(paid_at=paid_at):
                self.paid_at = paid_at

    def add_line(self, text: str, unit_price: Decimal, quantity: int) -> None:
        if self.paid_at is not None:
            raise InvoiceError("a paid invoice cannot change")
        self.record(v2.LineAdded(text, unit_price, quantity))

    def pay(self, at: datetime) -> None:
        if self.paid_at is not None:
            raise InvoiceError("already paid")
        if not self.lines:
            raise InvoiceError("nothing to pay")
        self.record(v1.InvoicePaid(at))


def main() -> None:
    default = f"sqlite:///{Path(tempfile.mkdtemp(prefix='domain-codegen-')) / 'billing.db'}"
    db = database(os.environ.get("PUPSOURCING_DB") or default)
    try:
        conn = db.connect()
    except Exception as exc:  # the server is down, or refuses us
        message = db.url.scrub(str(exc).splitlines()[0] if str(exc) else "")
        sys.exit(f"cannot connect to the database PUPSOURCING_DB names ({db.url}): {message}")
    db.store.create_schema(conn)
    conn.commit()
    invoice_id = f"{INVOICE}-{os.getpid()}"

    # Release 1 of the service stored these (v1 events, through the mapping).
    old = [
        v1.InvoiceOpened(INVOICE, "ada", datetime(2024, 1, 2, 9, 0, tzinfo=UTC)),
        v1.LineAdded("consulting", Decimal("400.00")),
    ]
    db.store.append(
        conn, ExpectedVersion.no_stream(), to_es_events("Billing", "Invoice", invoice_id, old)
    )
    conn.commit()

    # Today's code: a Repository with the generated codec, a snapshot every 3 events.
    repo = Repository(db.store, Invoice, CODEC, snapshot_every=3)
    invoice = repo.load(conn, invoice_id)
    print(f"loaded v{invoice.version}: {invoice.customer}, total {invoice.total}")
    invoice.add_line("workshop seat", Decimal("150.00"), 2)
    invoice.pay(datetime(2024, 2, 1, 17, 30, tzinfo=UTC))
    result = repo.save(conn, invoice, correlation_id="pay-run-7")
    conn.commit()
    assert result is not None
    print(f"saved versions {result.from_version + 1}..{result.to_version}")

    stream = db.store.read_aggregate_stream(conn, "Billing", "Invoice", invoice_id)
    for event in stream:
        print(
            f"  v{event.aggregate_version} {event.event_type} (event_version {event.event_version})"
        )
    again = repo.load(conn, invoice_id)  # from the snapshot at version 4
    print(f"reloaded v{again.version}: total {again.total}, paid {again.paid_at:%Y-%m-%d}")
    print("lines:", "; ".join(f"{text} {amount}" for text, amount in again.lines))
    try:
        again.add_line("late fee", Decimal("10"), 1)
    except InvoiceError as exc:
        print("refused:", exc)
    conn.close()


if __name__ == "__main__":
    main()
