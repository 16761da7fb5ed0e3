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

    The first failure stops the others and is raised once they have finished
    their current batch. Cancelling :meth:`run` cancels every projection's
    task (each rolls back the batch it was in) and waits for them.
    """

    async def run(
        self, runners: Sequence[ProjectionRunner], *, stop: asyncio.Event | None = None
    ) -> None:
        runners = check_runners(runners, AsyncProcessor, "AsyncRunner")
        halt = asyncio.Event()
        failures: list[BaseException] = []

        async def work(runner: ProjectionRunner) -> None:
            processor = runner.processor
            assert isinstance(processor, AsyncProcessor)  # check_runners made sure
            try:
                await processor.run(runner.projection, stop=halt)
            except Exception as exc:
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
            # only once each has rolled back what it was doing.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            relay.cancel()
        if failures:
            raise failures[0]
