"""Run several projections at once, each on its own processor and thread."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pupsourcing.core.errors import PupsourcingError
from pupsourcing.projection.processor import Processor
from pupsourcing.projection.protocols import Projection

if TYPE_CHECKING:
    from pupsourcing.aio.processor import AsyncProcessor

__all__ = ["NoProjectionsError", "ProjectionRunner", "Runner"]


class NoProjectionsError(PupsourcingError, ValueError):
    """``Runner.run`` was given no projections."""

    def __init__(self, message: str = "the runner needs at least one projection") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ProjectionRunner:
    """A projection and the processor that feeds it: a :class:`Processor`
    for :class:`Runner`, an :class:`~pupsourcing.aio.AsyncProcessor` for
    :class:`~pupsourcing.aio.AsyncRunner`."""

    projection: Projection
    processor: Processor[Any] | AsyncProcessor[Any]


def check_runners(
    runners: Sequence[ProjectionRunner], processor_type: type, runner_type: str
) -> list[ProjectionRunner]:
    """The runners as a list, after the checks both runners make."""
    runners = list(runners)
    if not runners:
        raise NoProjectionsError()
    for runner in runners:
        if not isinstance(runner.processor, processor_type):
            raise TypeError(
                f"{runner_type} runs projections on {processor_type.__name__}s, got "
                f"{type(runner.processor).__name__} (Runner takes Processor, "
                "pupsourcing.aio.AsyncRunner takes AsyncProcessor)"
            )
    processors = [id(r.processor) for r in runners]
    if len(set(processors)) != len(processors):
        raise ValueError("each projection needs its own Processor (they are not shared)")
    given = [id(r.processor._conn) for r in runners if r.processor._factory is None]
    if len(set(given)) != len(given):
        raise ValueError(
            "each projection's Processor needs its own connection (a batch is a "
            "transaction on it): pass each a connection, or a connection factory"
        )
    return runners


class Runner:
    """Runs projections concurrently (one thread each) until ``stop`` is set;
    the blocking counterpart of :class:`pupsourcing.aio.AsyncRunner`.

    ``poll_interval`` is how often, in seconds, :meth:`run` looks at ``stop``
    (a :class:`threading.Event` cannot wake the calling thread while it waits
    for the projections' threads).
    """

    def __init__(self, *, poll_interval: float = 0.05) -> None:
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
            raise ValueError(f"poll_interval must be a number of seconds, got {poll_interval!r}")
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be above 0 and finite, got {poll_interval!r}")
        self.poll_interval = poll_interval

    def run(
        self, runners: Sequence[ProjectionRunner], *, stop: threading.Event | None = None
    ) -> None:
        """Run each projection on its own processor until ``stop`` is set (or
        until one fails, without ``stop``).

        When a processor raises (a :class:`~pupsourcing.ProjectionError`, a
        database error it does not retry, or a ``BaseException`` such as
        ``SystemExit`` raised by a handler), the others are asked to stop,
        each commits or rolls back the batch it is in, and then the first
        exception is raised. An empty ``runners`` raises
        :class:`~pupsourcing.runner.NoProjectionsError`; a processor of the
        other API raises :class:`TypeError`, and one given to two projections,
        or two processors given one connection, :class:`ValueError`.

        Interrupted (``KeyboardInterrupt`` in the calling thread), it asks every
        projection to stop, waits until each has finished the batch it is in
        (a thread cannot be cut short) and raises the interruption. A second
        interruption while it waits is raised at once; the batches still end
        in their threads, which the program's exit waits for.
        """
        runners = check_runners(runners, Processor, "Runner")
        halt = threading.Event()
        if stop is not None and stop.is_set():
            halt.set()  # before the threads start: none begins a batch
        finished: queue.Queue[tuple[ProjectionRunner, BaseException | None]] = queue.Queue()
        ended = [threading.Event() for _ in runners]

        def work(runner: ProjectionRunner, end: threading.Event) -> None:
            error: BaseException | None = None
            processor = runner.processor
            assert isinstance(processor, Processor)  # check_runners made sure
            try:
                processor.run(runner.projection, stop=halt)
            except BaseException as exc:  # reported to the caller's thread
                error = exc
            finally:
                halt.set()
                finished.put((runner, error))
                end.set()

        threads = [
            threading.Thread(
                target=work,
                args=(r, end),
                name=f"pupsourcing-{getattr(r.projection, 'name', '?')}",
            )
            for r, end in zip(runners, ended, strict=True)
        ]
        first_error: BaseException | None = None
        done = started = 0
        try:
            for thread in threads:
                thread.start()
                started += 1
            while done < len(threads):
                if stop is not None and stop.is_set():
                    halt.set()
                try:
                    _, error = finished.get(timeout=self.poll_interval)
                except queue.Empty:
                    continue
                done += 1
                if error is not None and first_error is None:
                    first_error = error
        except BaseException:
            halt.set()
            raise
        finally:
            halt.set()
            for thread, end in zip(threads[:started], ended, strict=False):
                # Not an interruptible join: on Python < 3.13 a join cut short
                # marks the thread ended while it runs (the exit would not wait).
                end.wait()
                thread.join()
        if first_error is not None:
            raise first_error
