"""Run several projections at once on asyncio, each on its own processor and task."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pupsourcing.aio.processor import AsyncProcessor
from pupsourcing.runner import ProjectionRunner, check_runners

__all__ = ["AsyncRunner"]


class AsyncRunner:
    """Runs projections concurrently (one task each) until ``stop`` is set;
    the asyncio counterpart of :class:`pupsourcing.runner.Runner`.

    It takes no ``poll_interval``: :meth:`run` awaits ``stop`` (an
    :class:`asyncio.Event`) instead of looking at it from time to time.
    """

    async def run(
        self, runners: Sequence[ProjectionRunner], *, stop: asyncio.Event | None = None
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

        Cancelled (or a projection's task cancelled), it cancels every
        projection's task (each rolls back the batch it is in), waits until
        all have ended and raises :class:`asyncio.CancelledError`.
        """
        runners = check_runners(runners, AsyncProcessor, "AsyncRunner")
        halt = asyncio.Event()
        failures: list[BaseException] = []

        async def work(runner: ProjectionRunner) -> None:
            processor = runner.processor
            assert isinstance(processor, AsyncProcessor)  # check_runners made sure
            try:
                await processor.run(runner.projection, stop=halt)
            except asyncio.CancelledError:
                raise  # cancels the run: see below
            except BaseException as exc:  # reported to the caller, as Runner does
                failures.append(exc)
            finally:
                halt.set()

        async def relay_stop() -> None:
            if stop is not None:
                await stop.wait()
                halt.set()

        relay = asyncio.create_task(relay_stop())
        tasks = [
            asyncio.create_task(work(r), name=f"pupsourcing-{getattr(r.projection, 'name', '?')}")
            for r in runners
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # Cancelled (or interrupted): stop every projection, and return
            # only once each has rolled back what it was doing. A task that
            # gather already cancelled is not cancelled again: that would cut
            # its clean-up short (closing its connection).
            for task in tasks:
                if not task.done() and not task.cancelling():
                    task.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            relay.cancel()
        if failures:
            raise failures[0]
