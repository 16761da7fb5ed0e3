"""stderr for long-running commands: log lines, and on a terminal a few status
lines kept at the bottom and redrawn in place."""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import threading
from collections.abc import Callable
from typing import TextIO

_CLEAR_LINE = "\r\x1b[2K"
_UP = "\x1b[1A"


class Console:
    """Writes log lines to ``stream``; on a terminal also keeps ``status``
    lines (progress bars) below them, redrawn by :meth:`show`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._lock = threading.RLock()  # reentrant: signal handlers log too
        self._status: list[str] = []
        self._fitted = False

    def _clear(self) -> None:
        if self._status:
            self.stream.write(_CLEAR_LINE + (_UP + _CLEAR_LINE) * (len(self._status) - 1))

    def _draw(self) -> None:
        if self._status:
            width = self.width
            lines = self._status if self._fitted else [line[:width] for line in self._status]
            self.stream.write("\n".join(lines))

    def write(self, line: str) -> None:
        """One log line, above the status lines."""
        with self._lock:
            self._clear()
            self.stream.write(line + "\n")
            self._draw()
            self.stream.flush()

    @property
    def width(self) -> int:
        """The columns a status line may take."""
        return max(shutil.get_terminal_size().columns - 1, 20)

    def show(self, lines: list[str], *, fitted: bool = False) -> None:
        """Replace the status lines (only on a terminal); ``fitted`` lines
        (styled ones) are already no wider than :attr:`width`."""
        if not self.tty:
            return
        with self._lock:
            self._clear()
            self._status = list(lines)
            self._fitted = fitted
            self._draw()
            self.stream.flush()

    def finish(self) -> None:
        """Leave the status lines on screen and move below them."""
        with self._lock:
            if self._status:
                self.stream.write("\n")
                self._status = []
                self.stream.flush()


class ConsoleHandler(logging.Handler):
    """A logging handler writing through a :class:`Console`, each line passed
    through ``scrub`` (which hides the database URL's secrets)."""

    def __init__(self, console: Console, scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.console = console
        self.scrub = scrub

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.console.write(self.scrub(line) if self.scrub else line)
        except Exception:
            self.handleError(record)


LOG_FORMATS = ("text", "json")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
"""A log record's own attributes; any other one came as ``extra``."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger,
    message, ``tag`` (which worker) when given, the exception's traceback,
    and every field the record was given as ``extra`` (the batch records'
    projection, handled, checkpoint, fetched); an extra named like one of
    the line's own fields goes under ``extra_<name>``. ``scrub`` filters
    each text value before it is encoded: JSON escapes quotes, backslashes
    and non-ASCII characters, so a secret holding one would no longer be
    found in the encoded line."""

    def __init__(self, tag: str = "", scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.tag = tag
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.tag:
            entry["tag"] = self.tag
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                while key in entry:  # the line's own field: theirs beside it
                    key = f"extra_{key}"
                entry[key] = value
        if self.scrub is not None:
            entry = {k: self._text(v) if isinstance(v, str) else v for k, v in entry.items()}
        try:
            return json.dumps(entry, default=self._text, allow_nan=False)
        except (TypeError, ValueError):  # NaN (not JSON), a key JSON has no type for
            return json.dumps(
                {k: v if isinstance(v, str) else self._text(v) for k, v in entry.items()}
            )

    def _text(self, value: object) -> str:
        """``value`` as text (JSON has no type for it), scrubbed."""
        text = str(value)
        return text if self.scrub is None else self.scrub(text)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def setup_logging(
    console: Console,
    verbosity: int,
    tag: str = "",
    scrub: Callable[[str], str] | None = None,
    log_format: str = "text",
) -> None:
    """Log to ``console``: warnings from the processors, the command's own
    progress lines, and with ``-v`` every batch (``-vv``: debug), as text
    lines or (``log_format="json"``) JSON lines. ``scrub`` filters each
    line: driver errors may quote the URL's secrets."""
    label = f" [{tag}]" if tag else ""
    if log_format == "json":  # scrubbed before encoding, see JsonFormatter
        handler = ConsoleHandler(console)
        handler.setFormatter(JsonFormatter(tag, scrub))
    else:
        handler = ConsoleHandler(console, scrub)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{label} %(name)s: %(message)s")
        )
    root = logging.getLogger("pupsourcing")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(
        logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )
    logging.getLogger("pupsourcing.cli").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    if log_format == "json":
        _log_the_rest(handler)


def _log_the_rest(handler: logging.Handler) -> None:
    """Records of every other logger (the projections' own, say) and
    ``warnings.warn`` through ``handler`` too, so that every line on stderr
    is JSON; unless the application configured logging itself."""
    top = logging.getLogger()
    if not top.handlers:
        top.addHandler(handler)
        logging.captureWarnings(True)
