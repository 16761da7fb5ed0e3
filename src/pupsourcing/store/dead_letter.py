"""What a store knows about one event a projection set aside."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

MAX_ERROR_TYPE = 255
"""Characters of the error type a dead letter keeps (a VARCHAR(255) on MySQL)."""
MAX_MESSAGE = 4000
"""Characters of the error message a dead letter keeps."""
MAX_TRACEBACK = 15000
"""Characters of the traceback a dead letter keeps (its end: where it failed);
a MySQL ``TEXT`` holds 65,535 bytes, four per character at worst."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of the dead-letters table: an event that a projection's
    handler failed on ``attempts`` times in a row under
    ``ProcessorConfig(on_failure="dead_letter")``, so the processor recorded
    it here and moved its checkpoint past it.

    ``projection_name`` is the checkpoint name (``"<name>_p<k>"`` for
    partition ``k``). ``error_type`` is the exception's qualified class name,
    ``message`` its text and ``traceback`` the formatted traceback (long ones
    keep their end). ``failed_at`` (UTC) is ``None`` when the database holds a
    value it cannot be read from.
    """

    projection_name: str
    global_position: int
    event_id: uuid.UUID
    error_type: str
    message: str
    traceback: str
    attempts: int
    failed_at: datetime | None


def error_type_name(exc: BaseException) -> str:
    """``ValueError`` for built-in exceptions, ``module.Class`` for others."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` within ``limit`` characters and storable as text (no NUL,
    no lone surrogates): a marker shows where it was cut."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    marker = "[...]"
    keep = limit - len(marker)
    return marker + text[-keep:] if keep_end else text[:keep] + marker


_PARTITION = re.compile(r"_p(?:0|[1-9][0-9]*)\Z")


def belongs_to(checkpoint_name: str, projection_name: str) -> bool:
    """Whether a dead letter recorded under ``checkpoint_name`` is
    ``projection_name``'s: the name itself, or one of its partitions'
    (``"<name>_p<k>"``)."""
    if checkpoint_name == projection_name:
        return True
    rest = checkpoint_name[len(projection_name) :]
    return checkpoint_name.startswith(projection_name) and _PARTITION.match(rest) is not None
