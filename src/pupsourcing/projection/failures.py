"""The failure policy of a projection processor, as plans shared by every
database and by the blocking and asyncio processors (see
:mod:`pupsourcing.projection.core`).

A batch whose handler raised is tried again, ``ProcessorConfig.max_attempts``
times in all. Then, under ``on_failure="dead_letter"``,
:func:`dead_letter_step` handles the events of the batch before the failing
one, records the failing event in the dead-letters table and moves the
checkpoint to it, in one transaction (compare-and-set, as every batch).
:func:`replay` hands recorded events to the projection again.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from pupsourcing._text import one_line
from pupsourcing.core.errors import ProjectionError
from pupsourcing.projection.batch import (
    Handle,
    Logger,
    StepOutcome,
    StepPlan,
    Subscription,
    _ensure_checkpoint,
    _fetch_statement,
    _handle_and_advance,
    _record,
    database_failure,
    finish,
)
from pupsourcing.store.dialect import Dialect
from pupsourcing.store.plan import ROLLBACK, Statement

RETRY_INITIAL_DELAY = 0.1
"""Seconds before the second attempt of a failed batch; doubles per attempt."""
RETRY_MAX_DELAY = 5.0


@dataclass(slots=True)
class Failing:
    """The event a projection's handler keeps failing on."""

    position: int
    error: BaseException
    """The handler's exception of the last attempt."""
    attempts: int = 1
    due: bool = False
    """Attempts are used up: the next step records it as a dead letter."""

    def retry_delay(self) -> float:
        return min(RETRY_INITIAL_DELAY * 2.0 ** (self.attempts - 1), RETRY_MAX_DELAY)


def dead_letter_step(
    dialect: Dialect, sub: Subscription, failing: Failing, max_attempts: int, logger: Logger
) -> StepPlan:
    """Handle the events before ``failing`` (in scope, after the checkpoint),
    record ``failing`` as a dead letter and move the checkpoint to it, in one
    transaction. Nothing to do when the checkpoint is already there.
    ``max_attempts``: the configured attempts, for the log line."""
    checkpoint = yield from _ensure_checkpoint(dialect, sub)
    position = failing.position
    if checkpoint >= position:
        return StepOutcome(0, idle=False)
    # The failing event was in the batch: the events up to it fit in one.
    rows = yield _fetch_statement(dialect, sub, checkpoint, position)
    events = Handle(
        [row for row in sub.select(rows) if int(row[0]) < position],
        sub.decoder(dialect),
        position,
    )
    advanced, _ = yield from _handle_and_advance(
        dialect,
        sub,
        events,
        checkpoint,
        position,
        logger,
        then=lambda: dialect.record_dead_letter(
            sub.checkpoint_name, position, failing.error, failing.attempts
        ),
    )
    if not advanced:
        sub.checkpoint = None
        return StepOutcome(0, idle=False, contended=True)
    logger.error(
        "projection %s: the event at global position %d failed %d time%s (%s); recorded in "
        "%s as a dead letter, checkpoint moved past it",
        sub.label,
        position,
        failing.attempts,
        "" if failing.attempts == 1 else "s",
        type(failing.error).__name__,
        dialect.config.dead_letters_table,
        exc_info=failing.error,  # the attempts' lines had no traceback
        extra=sub.log_fields(
            global_position=position,
            attempts=failing.attempts,
            max_attempts=max_attempts,
        ),
    )
    return _record(sub, len(events), len(rows), position, logger)


def replay(dialect: Dialect, sub: Subscription, logger: Logger) -> Generator[Any, Any, int]:
    """Hand each dead letter of ``sub``'s checkpoint to the projection again,
    one transaction each, deleting the record in it when the handler
    succeeds; a failure counts one more attempt on the record instead.
    Returns how many succeeded.

    The record is deleted first: that locks it, so a replay running at the
    same time waits, then finds it gone and skips it, instead of handling
    the event a second time."""
    checkpoint_name = sub.checkpoint_name
    letters = yield from dialect.list_dead_letters(checkpoint_name, exact=True)
    yield ROLLBACK  # end the read's transaction
    replayed = 0
    for letter in letters:
        position = letter.global_position
        yield Statement(dialect.begin_sql, begin=True)
        try:
            [(claimed,)] = yield dialect.delete_dead_letter(checkpoint_name, position)
            rows = (yield dialect.dead_letter_event(position)) if claimed else []
            if rows:
                yield Handle(rows, dialect.decode_events)
        except ProjectionError as failure:
            cause = failure.__cause__ or failure
            yield ROLLBACK
            failed = database_failure(dialect, cause)
            if failed is not None:
                raise failed from None  # the database failed, not the projection
            yield dialect.dead_letter_failed_again(checkpoint_name, position, cause)
            yield from finish(commit=True)
            logger.warning(
                "projection %s: the dead letter at global position %d failed again (%s: %s); kept",
                sub.label,
                position,
                type(cause).__name__,
                one_line(cause),
                extra=sub.log_fields(global_position=position),
            )
            continue
        except Exception:
            yield ROLLBACK
            raise
        if not rows:
            yield ROLLBACK
            if claimed:
                logger.warning(
                    "projection %s: the dead letter at global position %d has no event; kept",
                    sub.label,
                    position,
                    extra=sub.log_fields(global_position=position),
                )
            continue  # (else another replay took it)
        yield from finish(commit=True)
        replayed += 1
        logger.info(
            "projection %s: the dead letter at global position %d was handled and deleted",
            sub.label,
            position,
            extra=sub.log_fields(global_position=position),
        )
    return replayed
