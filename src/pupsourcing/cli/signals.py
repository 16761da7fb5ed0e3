"""SIGINT and SIGTERM: for long-running commands, the first asks to stop
after the current batch, a second one stops at once; elsewhere (any command
before it runs, a one-shot command) they interrupt it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

logger = logging.getLogger("pupsourcing.cli")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

pending: list[int] = []
"""Signals that came before :func:`interruptible` was entered: ``python -m
pupsourcing`` collects them here while it imports the command line."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` (as
    Ctrl-C does by default, and for SIGTERM too: so a ``finally`` rolls back
    and closes); a signal in :data:`pending` is raised on entering."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers are the main thread's
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in SIGNALS}
    try:
        if pending:
            signum = pending[0]
            pending.clear()
            raise Interrupted(signum)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def runs_until_stopped(args: argparse.Namespace) -> bool:
    """Whether the command runs until a signal stops it: ``projections
    run``, ``relay nats``, ``ui`` (``long_running``) and ``events tail -f``."""
    return bool(getattr(args, "long_running", False) or getattr(args, "follow", False))


def interrupted_status(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """The exit status when ``exc`` interrupted the command: 0 when a signal
    stopped a command that runs until one does (while it started, say: a
    stop, as later on), else ``128 +`` the signal's number (130 for Ctrl-C)."""
    if isinstance(exc, Interrupted):
        return 0 if runs_until_stopped(args) else 128 + exc.signum
    return 128 + signal.SIGINT


def exit_now(signum: int) -> None:
    """Leave at once with ``128 + signum``; open transactions roll back when
    their connections drop."""
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    what: str = "stopping after the current batch",
    on_second: Callable[[int], None] | None = exit_now,
) -> Iterator[None]:
    """While inside, the first SIGINT/SIGTERM sets ``stop``; the next one
    calls ``on_second`` with its number (``None``: it changes nothing).
    Only signals count: ``stop`` set otherwise (a supervisor giving up on a
    crashing worker) leaves the next signal a first one."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) > 1:
            if on_second is None:
                logger.info("%s again: already %s", name, what)
                return
            logger.warning("%s again: stopping now", name)
            on_second(signum)
            return
        again = "" if on_second is None else " (send it again to stop at once)"
        logger.warning("%s: %s%s", name, what, again)
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
