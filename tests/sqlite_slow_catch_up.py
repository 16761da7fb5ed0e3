"""A processor process for ``test_sqlite_write_turns.py``.

    python sqlite_slow_catch_up.py PATH API

Catches the projection ``slow`` up on the SQLite store at ``PATH`` with the
blocking (``API`` = ``sync``) or asyncio (``async``) processor. Its handler
writes a row per event to ``seen`` through ``tx`` and then sleeps
:data:`SLOW` seconds, so each batch of 100 holds the write lock for about
a tenth of a second. Prints ``done N`` when it caught up.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from pupsourcing import PersistedEvent
from pupsourcing.adapters.sqlite import AsyncSQLiteStore, SQLiteStore, connect, connect_async
from pupsourcing.aio import AsyncProcessor
from pupsourcing.projection import Processor, ProcessorConfig

SLOW = 0.001
CONFIG = ProcessorConfig(batch_size=100)


class Slow:
    name = "slow"

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        tx.execute("INSERT INTO seen (position) VALUES (?)", (event.global_position,))
        time.sleep(SLOW)


class AsyncSlow:
    name = "slow"

    async def handle(self, event: PersistedEvent, tx: Any) -> None:
        await tx.execute("INSERT INTO seen (position) VALUES (?)", (event.global_position,))
        await asyncio.sleep(SLOW)


async def catch_up_async(path: str) -> int:
    conn = await connect_async(path)
    try:
        return await AsyncProcessor(conn, AsyncSQLiteStore(), CONFIG).catch_up(AsyncSlow())
    finally:
        await conn.close()


def main() -> None:
    path, api = sys.argv[1:3]
    if api == "async":
        handled = asyncio.run(catch_up_async(path))
    else:
        conn = connect(path)
        handled = Processor(conn, SQLiteStore(), CONFIG).catch_up(Slow())
        conn.close()
    print("done", handled, flush=True)


if __name__ == "__main__":
    main()
