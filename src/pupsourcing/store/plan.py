"""Sans-I/O plumbing shared by every adapter, sync and async.

A store operation is written once as a *plan*: a generator that yields the
:class:`Statement` objects it needs run and receives each one's rows back
(or has the driver's exception thrown in). Drivers only execute statements,
so the SQL, validation and row mapping exist in one place whatever the
database driver or I/O model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pupsourcing.core._fast import frozen_constructor

Row = tuple[Any, ...]
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an instruction a plan yields
A = TypeVar("A")  # the answer the plan receives for it


@dataclass(frozen=True, slots=True)
class RowDecoder:
    """How the rows of a result become values: ``many`` decodes a fetched
    list of tuples, or any iterable of them such as a cursor, in one go (one
    compiled loop), ``one`` a single row. A
    driver that can call ``one`` as it reads each row (psycopg's row
    factories) drops every raw row at once instead of holding them all until
    the whole result is decoded: a smaller working set, and fewer objects
    for the garbage collector to walk."""

    one: Callable[[Sequence[Any]], Any]
    many: Callable[[Iterable[Row]], list[Any]]


@frozen_constructor  # a few per batch and per append
@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement for a driver to execute.

    What the plan receives back: the result rows when ``fetch`` (decoded by
    ``decode`` when given); a single row ``(rowcount,)`` when ``rowcount``;
    otherwise an empty list. A ``begin`` statement is executed only when the
    connection has no transaction open, and answers ``[(True,)]`` when it
    started one, ``[]`` when it did not (see :attr:`eager`). A ``control``
    statement is not SQL: the driver commits or rolls back the connection's
    transaction (``sql`` is then only a label). A ``chunked`` read may be
    loaded as it arrives.
    """

    sql: str
    params: Sequence[Any] | Mapping[str, Any] = ()
    fetch: bool = False
    rowcount: bool = False
    begin: bool = False
    eager: bool = False
    """With :attr:`begin`: open the transaction now even where the connection
    would open one itself with its next statement (psycopg not in autocommit
    mode), as code of the application that uses the connection runs next: a
    projection's ``handle``, whose ``with tx.transaction():`` must be a
    savepoint of the batch's transaction, not a transaction of its own; on
    sqlite3 with ``autocommit=False``, even instead of the transaction the
    connection keeps open (the plan read in it, and holds the connection).
    With ``control="commit"``: open the next transaction in the same round
    trip, where the driver can (see :data:`COMMIT_AND_BEGIN`)."""
    control: Literal["commit", "rollback"] | None = None
    decode: RowDecoder | None = None
    chunked: bool = False
    """A read of up to a batch of events: a driver that can load a result
    chunk by chunk as it arrives may do so (the rows are the same)."""
    alone: bool = False
    """When no transaction is open yet, the statement may run as a
    transaction of its own (the plan's COMMIT or ROLLBACK that follows
    then finds nothing to do): nothing else would have been in it."""

    def answer(self, rows: Iterable[Any] | None, rowcount: int, decoded: bool = False) -> list[Any]:
        """What the plan receives once the driver ran this statement: ``rows``
        are the fetched rows as tuples (``None`` unless :attr:`fetch`), or
        already decoded by ``decode.one`` when ``decoded``; ``rowcount`` is the
        cursor's row count. Every store, blocking or asyncio, answers through
        this, so the plans see one behaviour whatever the driver."""
        if self.fetch:
            assert rows is not None
            if self.decode is not None and not decoded:
                return self.decode.many(rows if isinstance(rows, list) else list(rows))
            return list(rows)
        if self.rowcount:
            return [(rowcount,)]
        return [(True,)] if self.begin else []


COMMIT = Statement("COMMIT", control="commit")
ROLLBACK = Statement("ROLLBACK", control="rollback")
COMMIT_AND_BEGIN = Statement("COMMIT", control="commit", eager=True)
"""COMMIT, and where the driver can do it in the same round trip (psycopg),
open the next transaction: a projection batch whose successor's events are
read already (see :attr:`Statement.eager`)."""


Plan = Generator[Statement, list[Any], T]
"""A store operation: yields statements, receives their rows (or what a
statement's ``decode`` made of them), returns ``T``."""


def drive(plan: Generator[I, A, T], execute: Callable[[I], A]) -> T:
    """Run ``plan`` to completion, answering each instruction with a blocking
    ``execute`` (and throwing its exceptions into the plan).

    An interruption (``KeyboardInterrupt``, or any ``BaseException``) raised
    by ``execute`` is thrown into the plan too, as :func:`drive_async` throws
    a cancellation: the plan may undo what it wrote before it is raised (an
    append inside the caller's transaction, or its own transaction on an
    autocommit connection). The drivers are in step with the server once
    the interruption is raised: psycopg cancels the query it waited for,
    sqlite3 and mysqlclient finish the call they are in."""
    try:
        instruction = next(plan)
        while True:
            try:
                answer = execute(instruction)
            except BaseException as exc:  # handed to the plan, which maps or re-raises
                instruction = plan.throw(exc)
            else:
                instruction = plan.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()


async def drive_async(plan: Generator[I, A, T], execute: Callable[[I], Awaitable[A]]) -> T:
    """Run ``plan`` to completion with an awaitable ``execute``.

    A cancellation (or any ``BaseException``) at an await is thrown into the
    plan too, which may undo what it wrote before it is raised (an append
    inside the caller's transaction), as :func:`drive` does with an
    interruption."""
    try:
        instruction = next(plan)
        while True:
            try:
                answer = await execute(instruction)
            except BaseException as exc:
                instruction = plan.throw(exc)
            else:
                instruction = plan.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()
