"""Which copy of a relay publishes: a lease in the leases table.

Copies of one relay (one name) may run at once, say through a rolling
deploy. Only the copy holding the lease ``relay_<name>`` (partition 0 of
:attr:`StoreConfig.leases_table <pupsourcing.store.config.StoreConfig>`, see
:mod:`pupsourcing.store.leases`) publishes; the others wait as hot standby,
asking for it every :data:`STANDBY_LOOK` of the TTL, and take it over once
it is released or has run out (its holder died). The holder renews it every
third of the TTL on a connection of its own and stops publishing (after its
batch) when the lease was taken over or could not be renewed for most of it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pupsourcing.aio.claiming import drive_lease, lease_connection
from pupsourcing.aio.processor import close_quietly
from pupsourcing.projection.claiming import default_owner
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.layout import missing_table
from pupsourcing.store.leases import LeasePlans
from pupsourcing.store.plan import Plan

T = TypeVar("T")

LEASE_TTL = 10.0
"""Seconds the active relay's lease lasts without renewal: a standby copy
takes over within about this long after the active one died."""
STANDBY_LOOK = 0.25
"""A standby copy asks for the lease every this fraction of the TTL."""
_KEY = 0


class RelayLease:
    """The lease of one relay copy (``owner``) on ``name``, on a connection
    of its own from ``factory``. Without a leases table (a store made before
    it, or by the Go library) every copy takes itself as the holder, after
    one warning."""

    def __init__(
        self,
        factory: Callable[[], Any],
        store: AsyncSQLStore[Any],
        name: str,
        logger: logging.Logger,
        ttl: float = LEASE_TTL,
    ) -> None:
        self.factory = factory
        self.store = store
        self.name = name
        self.logger = logger
        self.ttl = ttl
        self.owner = default_owner()
        self.absent = False
        """Whether the store has no leases table (found at the first acquire)."""
        self._plans: LeasePlans = store.dialect.leases
        self._conn: Any = None
        self._busy = asyncio.Lock()
        """Held by each statement until it ended: a renewal given up on
        (cancelled) is still rolling back while the relay takes the lease
        again, which must not share the connection meanwhile."""

    async def acquire(self) -> bool:
        """Take (or keep) the lease for ``ttl`` seconds; whether this copy holds it."""
        if self.absent:
            return True
        try:
            await self._drive(self._plans.ensure(self.name, 1))
            held = await self._drive(self._plans.acquire(self.name, _KEY, self.owner, self.ttl))
        except Exception as exc:
            if not missing_table(exc):
                raise
            self.absent = True
            self.logger.warning(
                "relay %s: the store has no %s table, so copies of this relay running at once "
                "are not kept apart (run `pupsourcing migrate` to add it)",
                self.name,
                self.store.config.leases_table,
            )
            return True
        return bool(held)

    async def renew(self) -> bool:
        """Extend the lease by ``ttl`` seconds; ``False`` when another copy took it."""
        if self.absent:
            return True
        return bool(await self._drive(self._plans.renew(self.name, _KEY, self.owner, self.ttl)))

    async def release(self) -> None:
        """Give the lease up (best effort: otherwise it runs out) and close
        the connection."""
        try:
            if not self.absent:
                await self._drive(self._plans.release(self.name, _KEY, self.owner))
        except Exception as exc:
            self.logger.warning("relay %s: lease not released (it runs out): %s", self.name, exc)
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)

    async def _drive(self, plan: Plan[T]) -> T:
        """``plan`` as one committed lease transaction; the connection is
        dropped after a failure other than a transient one."""
        async with self._busy:
            if self._conn is None:
                self._conn = await lease_connection(self._open, self.store, self.ttl)
            try:
                return await drive_lease(self.store, self._conn, plan, self.ttl)
            except BaseException as exc:
                if not (isinstance(exc, Exception) and self.store.dialect.is_transient(exc)):
                    await self.close()
                raise

    async def _open(self) -> Any:
        opened = self.factory()
        return (await opened) if inspect.isawaitable(opened) else opened
