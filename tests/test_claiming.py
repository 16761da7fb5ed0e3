"""Self-balancing workers: the lease plans on every database, and
``projections run --claim`` as real processes sharing partitions."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import claim_projections
from cli_helpers import cli, execute
from conftest import Backend
from helpers import event, query
from pupsourcing import ExpectedVersion
from pupsourcing.projection import ClaimingRunner, ProcessorConfig
from pupsourcing.store import StoreConfig
from pupsourcing.store.leases import member_key
from test_cli_run import Running, wait_for

DATABASES = ["postgres", "mysql", "sqlite"]


def drive(backend: Backend, conn: Any, plan: Any) -> Any:
    result = backend.store._run(conn, plan)
    conn.commit()
    return result


def leases(backend: Backend, conn: Any, name: str) -> dict[int, tuple[str, float]]:
    rows = backend.store.list_leases(conn, name)
    conn.commit()
    return {lease.partition_key: (lease.owner, lease.expires_in) for lease in rows}


@pytest.mark.parametrize("name", DATABASES)
def test_lease_plans_compare_and_set(name: str, make_store_backend: Callable[..., Backend]) -> None:
    backend = make_store_backend(name)
    plans = backend.store.dialect.leases
    conn = backend.connection()
    drive(backend, conn, plans.ensure("proj", 3))
    drive(backend, conn, plans.ensure("proj", 3))  # idempotent
    assert {k: o for k, (o, _) in leases(backend, conn, "proj").items()} == {0: "", 1: "", 2: ""}
    assert all(expires < 0 for _, expires in leases(backend, conn, "proj").values())

    assert drive(backend, conn, plans.acquire("proj", 1, "a", 30.0)) is True
    assert drive(backend, conn, plans.acquire("proj", 1, "b", 30.0)) is False
    owner, expires = leases(backend, conn, "proj")[1]
    assert owner == "a"
    assert 25 < expires <= 30.5
    assert drive(backend, conn, plans.renew("proj", 1, "a", 60.0)) is True
    assert 55 < leases(backend, conn, "proj")[1][1] <= 60.5
    assert drive(backend, conn, plans.renew("proj", 1, "b", 60.0)) is False
    assert drive(backend, conn, plans.release("proj", 1, "b")) is False
    assert leases(backend, conn, "proj")[1][0] == "a"
    assert drive(backend, conn, plans.release("proj", 1, "a")) is True
    assert leases(backend, conn, "proj")[1][0] == ""
    assert drive(backend, conn, plans.acquire("proj", 1, "b", 30.0)) is True

    # An expired lease is taken over; its old owner can no longer renew it.
    assert drive(backend, conn, plans.acquire("proj", 2, "a", 0.3)) is True
    assert drive(backend, conn, plans.acquire("proj", 2, "b", 30.0)) is False
    time.sleep(0.5)
    assert leases(backend, conn, "proj")[2][1] < 0
    assert drive(backend, conn, plans.acquire("proj", 2, "b", 30.0)) is True
    assert drive(backend, conn, plans.renew("proj", 2, "a", 30.0)) is False
    assert leases(backend, conn, "proj")[2][0] == "b"

    # Member rows: announced, listed under a negative key, gone on leave.
    drive(backend, conn, plans.announce("proj", "c", 30.0))
    assert leases(backend, conn, "proj")[member_key("c")][0] == "c"
    assert member_key("c") < 0
    drive(backend, conn, plans.leave("proj", "c"))
    assert member_key("c") not in leases(backend, conn, "proj")
    assert leases(backend, conn, "other") == {}


def test_leases_table_is_configurable() -> None:
    assert StoreConfig().leases_table == "projection_leases"
    with pytest.raises(ValueError, match="leases_table"):
        StoreConfig(leases_table="bad name")


def test_claiming_runner_checks_its_arguments(make_store_backend: Callable[..., Backend]) -> None:
    backend = make_store_backend("sqlite")
    with pytest.raises(TypeError, match="callable"):
        ClaimingRunner(object(), backend.store)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_ttl"):
        ClaimingRunner(backend.connect, backend.store, lease_ttl=0)
    with pytest.raises(ValueError, match="owner"):
        ClaimingRunner(backend.connect, backend.store, owner="")


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, e: Any, tx: Any) -> None:
        pass


def test_both_claiming_runners_need_projections_of_distinct_names(
    make_store_backend: Callable[..., Backend],
) -> None:
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("sqlite")
    runner = ClaimingRunner(backend.connect, backend.store)
    twin = AsyncClaimingRunner(backend.open_async, backend.async_store())
    for bad, message in [([], "at least one"), ([Named("a"), Named("a")], "distinct")]:
        with pytest.raises(ValueError, match=message):
            runner.run(bad)
        with pytest.raises(ValueError, match=message):
            asyncio.run(twin.run(bad))  # type: ignore[arg-type]
        # Any iterable of projections, as Runner takes: a generator is no projection.
        with pytest.raises(ValueError, match=message):
            runner.run(p for p in bad)
        with pytest.raises(ValueError, match=message):
            asyncio.run(twin.run(p for p in bad))  # type: ignore[misc]


class FailsOnStop:
    """Fails the batch it is in once ``stop`` is set."""

    name = "fails_on_stop"

    def __init__(self, entered: Any, stop: Any) -> None:
        self.entered, self.stop = entered, stop

    def handle(self, e: Any, tx: Any) -> None:
        self.entered.set()
        assert self.stop.wait(10)
        raise RuntimeError("failed while stopping")


class AsyncFailsOnStop(FailsOnStop):
    async def handle(self, e: Any, tx: Any) -> None:  # type: ignore[override]
        self.entered.set()
        await self.stop.wait()
        raise RuntimeError("failed while stopping")


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_partition_failing_while_the_runner_stops_is_raised(
    api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A batch that fails after ``stop`` was set (the runner is stopping) is
    still a failure: ``run`` raises it, as Runner.run does."""
    import asyncio
    import threading

    from pupsourcing import ProjectionError
    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("sqlite")
    conn = backend.connection()
    backend.store.append(conn, ExpectedVersion.any(), [event("agg-0")])
    conn.commit()
    config = ProcessorConfig(poll_interval=0.01)

    def blocking() -> None:
        projection = FailsOnStop(threading.Event(), threading.Event())

        def stop_once_entered() -> None:
            if projection.entered.wait(10):
                projection.stop.set()

        threading.Thread(target=stop_once_entered, daemon=True).start()
        runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=1)
        runner.run(projection, stop=projection.stop)

    async def asyncio_() -> None:
        projection = AsyncFailsOnStop(asyncio.Event(), asyncio.Event())
        store = backend.async_store()
        runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=1)
        run = asyncio.create_task(runner.run(projection, stop=projection.stop))
        await asyncio.wait_for(projection.entered.wait(), 10)
        projection.stop.set()
        await run

    with pytest.raises(ProjectionError) as caught:
        blocking() if api == "blocking" else asyncio.run(asyncio_())
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_two_runners_in_one_process_share_partitions(
    make_store_backend: Callable[..., Backend],
) -> None:
    import threading

    backend = make_store_backend("postgres")
    conn = backend.connection()
    execute(conn, claim_projections.CREATE_TABLE)
    for i in range(40):
        backend.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
    conn.commit()
    config = ProcessorConfig(total_partitions=4, poll_interval=0.05)
    a = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=0.6, owner="a")
    b = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=0.6, owner="b")
    stop_a, stop_b = threading.Event(), threading.Event()
    recorder = claim_projections.ClaimRecorder()
    threads = [
        threading.Thread(target=a.run, args=(recorder,), kwargs={"stop": stop_a}),
        threading.Thread(target=b.run, args=(recorder,), kwargs={"stop": stop_b}),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: len(a.held().get("claimed", [])) == 2 and len(b.held().get("claimed", [])) == 2,
            what="two partitions each",
        )
        assert set(a.held()["claimed"]) | set(b.held()["claimed"]) == {0, 1, 2, 3}
        stop_b.set()
        threads[1].join(timeout=10)
        wait_for(lambda: a.held().get("claimed") == [0, 1, 2, 3], what="a takes over b's share")
        # A lease taken over (here by hand) stops that partition in a at once.
        plans = backend.store.dialect.leases
        execute(
            conn,
            "UPDATE projection_leases SET owner = 'thief', expires_at = expires_at + 3600 "
            "WHERE projection_name = 'claimed' AND partition_key = 3",
        )
        conn.commit()
        wait_for(lambda: 3 not in a.held().get("claimed", []), timeout=3, what="a lets go of 3")
        assert drive(backend, conn, plans.release("claimed", 3, "thief")) is True
        wait_for(lambda: a.held().get("claimed") == [0, 1, 2, 3], what="a claims 3 again")
        wait_for(lambda: handled(backend, conn) == 40, what="every event")
    finally:
        stop_a.set()
        stop_b.set()
        for thread in threads:
            thread.join(timeout=10)
    counts = Counter(r[0] for r in query(conn, f"SELECT event_id FROM {claim_projections.TABLE}"))
    conn.commit()
    assert len(counts) == 40
    assert set(counts.values()) == {1}
    assert {owner for owner, _ in leases(backend, conn, "claimed").values()} == {""}


def handled(backend: Backend, conn: Any) -> int:
    rows = query(conn, f"SELECT COUNT(*) FROM {claim_projections.TABLE}")
    conn.commit()
    return int(rows[0][0])


def checkpoint_names(backend: Backend, conn: Any) -> set[str]:
    names = {c.name for c in backend.store.list_checkpoints(conn)}
    conn.commit()
    return names


@pytest.fixture
def workers() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        run.kill()


@pytest.mark.parametrize("name", ["postgres", "sqlite"])
def test_claiming_workers_share_take_over_and_rebalance(
    name: str, make_store_backend: Callable[..., Backend], workers: list[Running]
) -> None:
    backend = make_store_backend(name)
    conn = backend.connection()
    execute(conn, claim_projections.CREATE_TABLE)
    conn.commit()
    total, ttl = 6, 1.5

    def append(count: int, offset: int) -> None:
        for i in range(offset, offset + count):
            backend.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
        conn.commit()

    def shares() -> Counter[str]:
        live = [o for k, (o, e) in leases(backend, conn, "claimed").items() if k >= 0 and e > 0]
        return Counter(live)

    def joined(run: Running) -> bool:
        return any(
            k < 0 and e > 0 and f":{run.process.pid}:" in o
            for k, (o, e) in leases(backend, conn, "claimed").items()
        )

    def start() -> Running:
        run = Running(
            "projections",
            "run",
            "claim_projections:recorder",
            "--total-partitions",
            str(total),
            "--claim",
            "--lease-ttl",
            str(ttl),
            "--poll-interval",
            "0.05",
            "--batch-size",
            "5",
            "--no-progress",
            "-v",
            PUPSOURCING_DB=backend.url,
            CLAIM_DELAY="0.002",
        )
        workers.append(run)
        return run

    append(120, 0)
    first = [start() for _ in range(3)]
    wait_for(lambda: sorted(shares().values()) == [2, 2, 2], timeout=30, what="2 partitions each")

    first[0].process.kill()  # SIGKILL: its leases are left to expire
    first[0].wait()
    append(60, 120)
    started = time.monotonic()
    wait_for(
        lambda: sorted(shares().values()) == [3, 3], timeout=30, what="the survivors take over"
    )
    assert time.monotonic() - started < ttl + 3  # within the lease period, plus a tick

    joiner = start()
    # Its share is due within two lease periods of its joining: of its first
    # member row, not of its spawn (a loaded machine takes seconds to start
    # a Python process).
    wait_for(lambda: joined(joiner), timeout=30, what="the joiner's member row")
    started = time.monotonic()
    wait_for(lambda: sorted(shares().values()) == [2, 2, 2], timeout=30, what="the joiner's share")
    assert time.monotonic() - started < 2 * ttl + 3  # two lease periods, plus a tick
    append(60, 180)
    wait_for(lambda: handled(backend, conn) >= 240, timeout=60, what="every event handled")
    time.sleep(0.5)

    for run in (first[1], first[2], joiner):
        run.signal(signal.SIGTERM)
    for run in (first[1], first[2], joiner):
        assert run.wait() == 0, run.stderr
    rows = query(conn, f"SELECT event_id, worker_pid FROM {claim_projections.TABLE}")
    conn.commit()
    counts = Counter(r[0] for r in rows)
    assert len(counts) == 240
    assert set(counts.values()) == {1}  # exactly once, through kill and rebalancing
    assert len({r[1] for r in rows}) >= 3
    assert shares() == Counter()  # stopped workers released their leases

    status = cli("projections", "status", "--json", PUPSOURCING_DB=backend.url)
    assert status.returncode == 0, status.stderr
    assert '"lease": null' in status.stdout


@pytest.mark.parametrize("name", ["sqlite"])
def test_status_shows_owner_and_lease_expiry(
    name: str, make_store_backend: Callable[..., Backend], workers: list[Running]
) -> None:
    backend = make_store_backend(name)
    conn = backend.connection()
    execute(conn, claim_projections.CREATE_TABLE)
    append_one = [event("agg-1")]
    backend.store.append(conn, ExpectedVersion.any(), append_one)
    conn.commit()
    run = Running(
        "projections",
        "run",
        "claim_projections:recorder",
        "--total-partitions",
        "2",
        "--claim",
        "--no-progress",
        PUPSOURCING_DB=backend.url,
    )
    workers.append(run)
    wait_for(lambda: handled(backend, conn) == 1, what="the event")
    wait_for(
        lambda: (
            len([o for k, (o, _) in leases(backend, conn, "claimed").items() if k >= 0 and o]) == 2
        ),
        what="both partitions claimed",
    )
    # A worker claims its partition, then its processor makes the
    # checkpoint row that status lists the lease beside.
    wait_for(lambda: checkpoint_names(backend, conn) >= {"claimed_p0", "claimed_p1"}, what="rows")
    result = cli("projections", "status", PUPSOURCING_DB=backend.url)
    assert result.returncode == 0, result.stderr
    assert "OWNER" in result.stdout
    assert "LEASE" in result.stdout
    assert result.stdout.count("expires in") == 2
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr


@pytest.mark.parametrize("name", DATABASES)
def test_status_lists_a_claimed_partition_before_its_checkpoint_row(
    name: str, make_store_backend: Callable[..., Backend]
) -> None:
    # A worker claims its partition, then makes the checkpoint row at its
    # first batch: in between (or if it never gets there) the claim shows.
    backend = make_store_backend(name)
    conn = backend.connection()
    for aggregate in ("agg-1", "agg-2"):
        backend.store.append(conn, ExpectedVersion.any(), [event(aggregate)])
    conn.commit()
    plans = backend.store.dialect.leases
    drive(backend, conn, plans.ensure("claimed", 2))
    assert drive(backend, conn, plans.acquire("claimed", 1, "worker-b", 30.0)) is True
    before = checkpoint_names(backend, conn)

    result = cli("projections", "status", "--json", PUPSOURCING_DB=backend.url)
    assert result.returncode == 0, result.stderr
    [group] = json.loads(result.stdout)["projections"]
    assert group["name"] == "claimed"
    assert group["position"] == 0
    assert group["lag"] == 2
    [row] = group["checkpoints"]
    assert row["checkpoint"] == "claimed_p1"
    assert row["partition_key"] == 1
    assert row["position"] == 0
    assert row["updated_at"] is None
    assert row["lease"]["owner"] == "worker-b"
    assert 25 < row["lease"]["expires_in_seconds"] <= 30.5

    table = cli("projections", "status", PUPSOURCING_DB=backend.url)
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if "claimed_p1" in line]
    assert "never" in line
    assert "worker-b" in line
    assert checkpoint_names(backend, conn) == before  # status wrote nothing


def test_claim_needs_total_partitions(make_store_backend: Callable[..., Backend]) -> None:
    backend = make_store_backend("sqlite")
    result = cli(
        "projections", "run", "claim_projections:recorder", "--claim", PUPSOURCING_DB=backend.url
    )
    assert result.returncode == 2
    assert "--claim needs --total-partitions" in result.stderr


def test_async_claiming_runners_share_and_hand_over(
    make_store_backend: Callable[..., Backend],
) -> None:
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("postgres")
    conn = backend.connection()
    execute(conn, "CREATE TABLE async_claimed (event_id TEXT NOT NULL)")
    for i in range(30):
        backend.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
    conn.commit()
    store = backend.async_store()

    class Tally:
        name = "async_claimed"

        async def handle(self, e: Any, tx: Any) -> None:
            await tx.execute("INSERT INTO async_claimed VALUES (%s)", (str(e.event_id),))

    async def scenario() -> None:
        config = ProcessorConfig(total_partitions=4, poll_interval=0.05)
        a = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=0.6, owner="a")
        b = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=0.6, owner="b")
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(a.run(Tally(), stop=stop_a)),
            asyncio.create_task(b.run(Tally(), stop=stop_b)),
        ]
        deadline = time.monotonic() + 20
        while [len(r.held().get("async_claimed", [])) for r in (a, b)] != [2, 2]:
            assert time.monotonic() < deadline, (a.held(), b.held())
            await asyncio.sleep(0.05)
        stop_b.set()
        await tasks[1]
        while a.held().get("async_claimed") != [0, 1, 2, 3] or handled() < 30:
            assert time.monotonic() < deadline, a.held()
            await asyncio.sleep(0.05)
        stop_a.set()
        await tasks[0]

    def handled() -> int:
        rows = query(conn, "SELECT COUNT(*) FROM async_claimed")
        conn.commit()
        return int(rows[0][0])

    asyncio.run(scenario())
    counts = Counter(r[0] for r in query(conn, "SELECT event_id FROM async_claimed"))
    conn.commit()
    assert len(counts) == 30
    assert set(counts.values()) == {1}
    assert {owner for owner, _ in leases(backend, conn, "async_claimed").values()} == {""}


@pytest.mark.parametrize("name", DATABASES)
def test_cancelling_an_async_claiming_runner_mid_statement_ends_it(
    name: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A cancellation (``task.cancel()``, an ``asyncio.timeout``) that
    arrives while a lease statement waits for the database ends ``run`` with
    :class:`asyncio.CancelledError`. (asyncmy closes a connection cancelled
    midway through a reply, so rolling it back fails: that error is no reason
    to go on renewing leases.)"""
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend(name)
    base = type(backend.async_store())
    leases_table = backend.store.config.leases_table
    running: list[asyncio.Task[None]] = []

    class CancelledMidLease(base):  # type: ignore[valid-type, misc]
        async def _query(self, tx: Any, statement: Any) -> Any:
            if running and leases_table in statement.sql and asyncio.current_task() is running[0]:
                asyncio.get_running_loop().call_soon(running.pop().cancel)
            return await super()._query(tx, statement)

    async def scenario() -> None:
        store = CancelledMidLease(backend.store.config)
        config = ProcessorConfig(total_partitions=2, poll_interval=0.05)
        runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=1)
        run = asyncio.create_task(runner.run(Idle()))
        running.append(run)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(run), 10)
        assert run.cancelled()

    asyncio.run(scenario())


@pytest.mark.parametrize("at", ["renewal", "claim's commit"])
@pytest.mark.parametrize("name", DATABASES)
def test_a_cancelled_async_claiming_runner_releases_its_leases(
    name: str, at: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Cancelled while a lease statement or its COMMIT waits for the
    database, the runner still gives back every partition it holds and its
    member row, not leaving them to expire: on a new connection when the
    cancellation closed its own (asyncmy), and also the partition whose
    claim committed just as the cancellation arrived."""
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend(name)
    plans = backend.store.dialect.leases
    armed: list[asyncio.Task[None]] = []
    claimed: list[bool] = []

    class CancelledThere(type(backend.async_store())):  # type: ignore[misc]
        def _cancel_if_armed(self) -> None:
            if armed and asyncio.current_task() is armed[0]:
                asyncio.get_running_loop().call_soon(armed.pop().cancel)

        async def _query(self, tx: Any, statement: Any) -> Any:
            if at == "renewal" and statement.sql == plans.renew_sql:
                self._cancel_if_armed()
            if statement.sql == plans.acquire_sql and statement.params[3] >= 0:
                claimed.append(True)  # a partition's claim, not the member row's
            return await super()._query(tx, statement)

        async def _end_transaction(self, tx: Any, *, commit: bool) -> None:
            if at == "claim's commit" and claimed:
                claimed.clear()
                self._cancel_if_armed()
            await super()._end_transaction(tx, commit=commit)

    async def scenario() -> str:
        store = CancelledThere(backend.store.config)
        config = ProcessorConfig(total_partitions=2, poll_interval=0.05)
        runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=1)
        run = asyncio.create_task(runner.run(Idle()))
        if at == "renewal":  # once it holds both partitions
            deadline = time.monotonic() + 10
            while runner.held() != {"idle_claimed": [0, 1]}:
                assert time.monotonic() < deadline, runner.held()
                await asyncio.sleep(0.01)
        armed.append(run)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(run), 10)
        return runner.owner

    owner = asyncio.run(scenario())
    conn = backend.connection()
    held = {key: o for key, (o, _) in leases(backend, conn, "idle_claimed").items() if o}
    assert held == {}, f"{owner} still holds {held}"


def test_an_interrupted_claiming_runner_whose_rollback_fails_raises_the_interrupt(
    make_store_backend: Callable[..., Backend],
) -> None:
    """The blocking twin: a ``KeyboardInterrupt`` during a lease statement
    is raised even when rolling back the connection fails as well (it was
    lost, or left midway through a reply), not retried as a lease error."""
    backend = make_store_backend("sqlite")
    base = type(backend.store)
    leases_table = backend.store.config.leases_table

    class InterruptedMidLease(base):  # type: ignore[valid-type, misc]
        def _execute(self, tx: Any, statement: Any) -> Any:
            if leases_table in statement.sql:
                tx.close()  # its rollback fails
                raise KeyboardInterrupt
            return super()._execute(tx, statement)

    store = InterruptedMidLease(backend.store.config)
    config = ProcessorConfig(total_partitions=2, poll_interval=0.05)
    runner = ClaimingRunner(backend.connect, store, config, lease_ttl=1)
    stop = threading.Event()
    threading.Timer(10, stop.set).start()  # (fails rather than hangs)
    with pytest.raises(KeyboardInterrupt):
        runner.run(Idle(), stop=stop)
    assert not stop.is_set()
    stop.set()


def hold_as_dead_process(backend: Backend, name: str, total: int, ttl: float) -> float:
    """Lease ``name``'s partitions to an owner that then dies (never renews
    them); ``time.monotonic()`` at its last renewal."""
    plans, conn = backend.store.dialect.leases, backend.connection()
    drive(backend, conn, plans.ensure(name, total))
    for key in range(total):
        assert drive(backend, conn, plans.acquire(name, key, "dead", ttl)) is True
    drive(backend, conn, plans.announce(name, "dead", ttl))
    return time.monotonic()


class Idle:
    """A projection that handles nothing."""

    def __init__(self, name: str = "idle_claimed") -> None:
        self.name = name

    def handle(self, event: Any, tx: Any) -> None:
        pass


class AsyncIdle:
    """:class:`Idle` for the asyncio runners."""

    def __init__(self, name: str = "idle_claimed") -> None:
        self.name = name

    async def handle(self, event: Any, tx: Any) -> None:
        pass


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_dead_process_s_partitions_are_taken_over_within_the_lease_ttl(
    api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Contract: "the partitions of a process that died are taken over within
    --lease-ttl seconds", whatever the phase of the survivor's renewals: here
    it starts half a renewal period after the dead one's last renewal, so
    none of its renewals falls just after the leases expire."""
    import asyncio
    import threading

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("sqlite")
    ttl, total = 3.0, 2
    config = ProcessorConfig(total_partitions=total, poll_interval=0.05)
    died = hold_as_dead_process(backend, Idle().name, total, ttl)
    time.sleep(ttl / 6)

    def taken_over(held: Callable[[], dict[str, list[int]]]) -> float:
        while held().get(Idle().name) != list(range(total)):
            assert time.monotonic() < died + 2 * ttl, held()
            time.sleep(0.02)
        return time.monotonic() - died

    if api == "sync":
        runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=ttl)
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(Idle(),), kwargs={"stop": stop})
        thread.start()
        try:
            took = taken_over(runner.held)
        finally:
            stop.set()
            thread.join(timeout=10)
    else:
        arunner = AsyncClaimingRunner(
            backend.open_async, backend.async_store(), config, lease_ttl=ttl
        )

        async def scenario() -> float:
            astop = asyncio.Event()
            task = asyncio.create_task(arunner.run(Idle(), stop=astop))
            try:
                return await asyncio.to_thread(taken_over, arunner.held)
            finally:
                astop.set()
                await task

        took = asyncio.run(scenario())
    assert took < ttl + 0.4, f"taken over {took:.2f} s after the last renewal (lease_ttl {ttl})"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_runner_s_lease_lines_name_the_partition(
    api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A runner runs several partitions in one process: its lines about
    their leases name them as the partitions' processors do, with the same
    fields (for JSON logs)."""
    import asyncio
    import logging

    from helpers import LogRecords
    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("postgres")
    records = LogRecords(f"claim-lines-{api}")
    config = ProcessorConfig(total_partitions=2, poll_interval=0.05, logger=records.logger)

    if api == "sync":
        runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=3, owner="a")
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(Idle("lines"),), kwargs={"stop": stop})
        thread.start()
        try:
            wait_for(lambda: runner.held() == {"lines": [0, 1]}, what="both partitions")
        finally:
            stop.set()
            thread.join(timeout=10)
    else:

        async def scenario() -> None:
            store = backend.async_store()
            runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=3, owner="a")
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(AsyncIdle("lines"), stop=stop))
            deadline = time.monotonic() + 10
            while runner.held() != {"lines": [0, 1]}:
                assert time.monotonic() < deadline, runner.held()
                await asyncio.sleep(0.05)
            stop.set()
            await task

        asyncio.run(scenario())
    lines = {r.getMessage(): r for r in records.records if r.levelno == logging.INFO}
    assert "partition leases released" in lines, list(lines)  # the clean stop gave them back
    for key in (0, 1):
        record = lines[f"projection lines (partition {key} of 2): claimed by a"]
        fields: dict[str, object] = {"projection": "lines", "checkpoint_name": f"lines_p{key}"}
        fields.update(partition=key, total_partitions=2)
        assert {f: getattr(record, f, None) for f in fields} == fields


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_runner_logs_the_release_of_a_partition_it_hands_over(
    api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A runner that gives a partition to a process that joined says it is
    releasing it, then that it released it, both runners alike, with the
    partition's fields."""
    import asyncio
    import logging

    from helpers import LogRecords
    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend("postgres")
    records = LogRecords(f"claim-release-{api}")
    config = ProcessorConfig(total_partitions=2, poll_interval=0.05, logger=records.logger)
    other = ProcessorConfig(total_partitions=2, poll_interval=0.05)

    def released() -> list[str]:
        return [m for m in records.messages(logging.INFO) if m.endswith(": released")]

    if api == "sync":
        a = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=0.6, owner="a")
        b = ClaimingRunner(backend.connect, backend.store, other, lease_ttl=0.6, owner="b")
        stops = [threading.Event(), threading.Event()]
        threads = [
            threading.Thread(target=r.run, args=(Idle("handed"),), kwargs={"stop": s})
            for r, s in zip((a, b), stops, strict=True)
        ]
        threads[0].start()
        try:
            wait_for(lambda: a.held() == {"handed": [0, 1]}, what="both partitions")
            threads[1].start()
            wait_for(lambda: len(b.held().get("handed", [])) == 1, what="b's share")
            wait_for(lambda: bool(released()), what="a released line")
        finally:
            for stop in stops:
                stop.set()
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join(timeout=10)
    else:

        async def scenario() -> None:
            store = backend.async_store()
            a = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=0.6, owner="a")
            b = AsyncClaimingRunner(backend.open_async, store, other, lease_ttl=0.6, owner="b")
            stops = [asyncio.Event(), asyncio.Event()]
            tasks = [asyncio.create_task(a.run(AsyncIdle("handed"), stop=stops[0]))]
            deadline = time.monotonic() + 20
            try:
                while a.held() != {"handed": [0, 1]}:
                    assert time.monotonic() < deadline, a.held()
                    await asyncio.sleep(0.05)
                tasks.append(asyncio.create_task(b.run(AsyncIdle("handed"), stop=stops[1])))
                while len(b.held().get("handed", [])) != 1 or not released():
                    assert time.monotonic() < deadline, (b.held(), records.messages(logging.INFO))
                    await asyncio.sleep(0.05)
            finally:
                for stop in stops:
                    stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(scenario())
    infos = records.messages(logging.INFO)
    [line] = released()
    key = int(line.split("(partition ")[1][0])
    label = f"projection handed (partition {key} of 2)"
    releasing = infos.index(f"{label}: releasing it to balance")
    assert infos.index(f"{label}: released") > releasing
    [record] = [r for r in records.records if r.getMessage() == f"{label}: released"]
    fields = {"projection": "handed", "checkpoint_name": f"handed_p{key}", "partition": key}
    fields["total_partitions"] = 2
    assert {f: getattr(record, f, None) for f in fields} == fields


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_lease_outage_is_one_warning_then_a_line_when_it_ends(
    api: str, private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database is down the lease loop fails every ``lease_ttl /
    3`` seconds: as a processor's reconnect, it says so once (a WARNING, the
    driver's message on one line), logs the attempts that fail again at
    DEBUG with a WARNING every ``RECONNECT_WARNING`` seconds (shortened
    here), and says at INFO when the leases are renewed again; the runner
    then claims its partitions again."""
    import asyncio
    import itertools
    import logging

    from conftest import close_backend, private_backend
    from helpers import LogRecords
    from pupsourcing.aio import AsyncClaimingRunner
    from pupsourcing.projection import claiming

    every = 1.0
    monkeypatch.setattr(claiming, "RECONNECT_WARNING", every)
    backend = private_backend(private_postgres)
    records = LogRecords(f"claim-outage-{api}")
    config = ProcessorConfig(total_partitions=2, poll_interval=0.05, logger=records.logger)

    def outage(held: Callable[[], dict[str, list[int]]]) -> None:
        wait_for(lambda: held() == {"idle_claimed": [0, 1]}, what="both partitions")
        private_postgres.stop()
        try:
            time.sleep(2.6)
        finally:
            private_postgres.start()
        wait_for(lambda: held() == {"idle_claimed": [0, 1]}, what="both partitions again")

    try:
        if api == "sync":
            runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=0.6)
            stop = threading.Event()
            thread = threading.Thread(target=runner.run, args=(Idle(),), kwargs={"stop": stop})
            thread.start()
            try:
                outage(runner.held)
            finally:
                stop.set()
                thread.join(timeout=10)
        else:

            async def scenario() -> None:
                store = backend.async_store()
                runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=0.6)
                stop = asyncio.Event()
                task = asyncio.create_task(runner.run(AsyncIdle(), stop=stop))
                try:
                    await asyncio.to_thread(outage, runner.held)
                finally:
                    stop.set()
                    await task

            asyncio.run(scenario())
    finally:
        private_postgres.ensure_started()
        close_backend(backend)
    lines = [
        r
        for r in records.records
        if r.getMessage().startswith("partition leases")
        and r.getMessage() != "partition leases released"  # (at the stop)
    ]
    levels = [r.levelno for r in lines]
    assert levels[0] == logging.WARNING, levels
    assert levels[-1] == logging.INFO, levels
    assert levels.count(logging.INFO) == 1, levels
    assert "again after" in lines[-1].getMessage()
    assert levels.count(logging.DEBUG) >= 3, levels
    warned = [r.created for r in lines if r.levelno == logging.WARNING]
    assert 2 <= len(warned) <= 4, levels  # the start, then one each `every` seconds
    assert all(b - a >= every for a, b in itertools.pairwise(warned)), warned
    assert all("\n" not in r.getMessage() for r in lines), [r.getMessage() for r in lines]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_leases_not_released_for_a_database_down_is_one_line(
    api: str, private_postgres: Any
) -> None:
    """A runner stopped while the database is down cannot give its leases
    back (they expire): it says so on one line, with the driver's message
    without its hint lines."""
    import asyncio
    import logging

    from conftest import close_backend, private_backend
    from helpers import LogRecords
    from pupsourcing.aio import AsyncClaimingRunner

    backend = private_backend(private_postgres)
    records = LogRecords(f"claim-unreleased-{api}")
    config = ProcessorConfig(total_partitions=2, poll_interval=0.05, logger=records.logger)

    try:
        if api == "sync":
            runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=3)
            stop = threading.Event()
            thread = threading.Thread(target=runner.run, args=(Idle(),), kwargs={"stop": stop})
            thread.start()
            try:
                wait_for(lambda: runner.held() == {"idle_claimed": [0, 1]}, what="partitions")
                private_postgres.stop()
            finally:
                stop.set()
                thread.join(timeout=10)
        else:

            async def scenario() -> None:
                store = backend.async_store()
                runner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=3)
                stop = asyncio.Event()
                task = asyncio.create_task(runner.run(AsyncIdle(), stop=stop))
                try:
                    while runner.held() != {"idle_claimed": [0, 1]}:
                        await asyncio.sleep(0.05)
                    await asyncio.to_thread(private_postgres.stop)
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 10)

            asyncio.run(scenario())
    finally:
        private_postgres.ensure_started()
        close_backend(backend)
    lines = [m for m in records.messages(logging.WARNING) if "not released" in m]
    assert len(lines) == 1, records.messages(logging.WARNING)
    assert lines[0].startswith("partition leases not released (they expire): ")
    assert "\n" not in lines[0], lines[0]


def test_claim_stopped_while_the_database_is_down_does_not_say_leases_released(
    private_postgres: Any,
) -> None:
    from conftest import close_backend, private_backend

    backend = private_backend(private_postgres)
    try:
        run = Running(
            "projections", "run", "claim_projections:recorder", "--total-partitions", "2",
            "--claim", "--lease-ttl", "2", "--no-progress", "-v",
            PUPSOURCING_DB=backend.url,
        )  # fmt: skip
        try:
            run.wait_for_line(r"partition 1 of 2\): claimed by")
            run.wait_for_line(r"partition 0 of 2\): claimed by")
            private_postgres.stop()
            run.wait_for_line("lost its connection")
            run.signal(signal.SIGTERM)
            assert run.wait() == 0, run.stderr
        finally:
            run.kill()
        assert "partition leases not released (they expire)" in run.stderr
        assert "leases released" not in run.stderr, run.stderr
        assert "stopped claimed" in run.stderr
    finally:
        private_postgres.ensure_started()
        close_backend(backend)


def lock_lease_row(backend: Backend, name: str, key: int) -> tuple[Any, float]:
    """Another session holding the lease row of partition ``key`` of ``name``
    locked (an open transaction; on SQLite the write lock): its connection,
    and ``time.monotonic()`` when that lease runs out."""
    blocker = backend.connect()
    table = backend.store.dialect.quote(backend.store.config.leases_table)
    now = backend.store.dialect.epoch_now_sql
    select = f"SELECT expires_at - {now} FROM {table} WHERE projection_name = '{name}'"
    select += f" AND partition_key = {key}"
    cursor = blocker.cursor()
    if backend.name == "sqlite":
        blocker.execute("BEGIN IMMEDIATE")
        cursor.execute(select)
    else:
        cursor.execute(f"{select} FOR UPDATE")
    expires_in = float(cursor.fetchone()[0])
    return blocker, time.monotonic() + expires_in


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("name", DATABASES)
def test_a_renewal_waiting_on_a_lock_stops_the_partition_before_its_lease_runs_out(
    name: str, api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Another session holds the lease row locked (SQLite: the write lock),
    so the renewal waits (PostgreSQL has no lock timeout by default, MariaDB
    waits 50 s, SQLite its busy timeout of 5 s): the runner stops the
    partition, after its batch, before its lease runs out and another
    process may take it, and runs it again once the lock is gone."""
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend(name)
    ttl, projection = 1.0, "locked"
    config = ProcessorConfig(total_partitions=1, poll_interval=0.02)
    seen: dict[str, float] = {}

    def scenario(held: Callable[[], dict[str, list[int]]], running: Callable[[], bool]) -> None:
        wait_for(lambda: held() == {projection: [0]}, what="the partition")
        blocker, expires = lock_lease_row(backend, projection, 0)
        try:
            while running() and time.monotonic() < expires + 2 * ttl:
                time.sleep(0.01)
            seen["stopped"], seen["expires"] = time.monotonic(), expires
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: held() == {projection: [0]} and running(), what="the partition again")

    if api == "sync":
        runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=ttl)
        stop = threading.Event()
        args = (Idle(projection),)
        thread = threading.Thread(target=runner.run, args=args, kwargs={"stop": stop})
        thread.start()

        def alive() -> bool:
            with runner._lock:
                part = runner._running.get((projection, 0))
            return part is not None and part.thread.is_alive()

        try:
            scenario(runner.held, alive)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
    else:

        async def run_async() -> None:
            store = backend.async_store()
            arunner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=ttl)
            astop = asyncio.Event()
            task = asyncio.create_task(arunner.run(AsyncIdle(projection), stop=astop))

            def working() -> bool:
                part = arunner._running.get((projection, 0))
                return part is not None and not part.task.done()

            try:
                await asyncio.to_thread(scenario, arunner.held, working)
            finally:
                astop.set()
                await asyncio.wait_for(task, 10)

        asyncio.run(run_async())
    late = seen["stopped"] - seen["expires"]
    assert late < 0, f"the partition ran {late:.2f} s past its lease (TTL {ttl})"


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("name", DATABASES)
def test_a_runner_stops_promptly_while_its_lease_statements_wait_on_a_lock(
    name: str, api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Another session holds the lease row locked (SQLite: the write lock)
    and the runner is asked to stop: its lease statements give up their
    lock waits after a fraction of the TTL (PostgreSQL would wait without
    end, MariaDB 50 s, SQLite the connection's busy timeout of 5 s), so the
    runner returns, its leases left to run out."""
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend(name)
    ttl, projection = 1.6, "stuck"
    bound = 2.5 * ttl  # (MariaDB waits whole seconds: 1 s per lease statement)
    config = ProcessorConfig(total_partitions=1, poll_interval=0.02)
    took: dict[str, float] = {}

    def scenario(held: Callable[[], dict[str, list[int]]], ask_stop: Callable[[], None]) -> None:
        wait_for(lambda: held() == {projection: [0]}, what="the partition")
        blocker, _ = lock_lease_row(backend, projection, 0)
        try:
            time.sleep(ttl / 3 + 0.2)  # the next renewal waits on the lock
            took["asked"] = time.monotonic()
            ask_stop()
            wait_for(lambda: "returned" in took, timeout=bound, what="the runner to return")
        finally:
            blocker.rollback()
            blocker.close()

    if api == "sync":
        runner = ClaimingRunner(backend.connect, backend.store, config, lease_ttl=ttl)
        stop = threading.Event()

        def run() -> None:
            runner.run(Idle(projection), stop=stop)
            took["returned"] = time.monotonic()

        thread = threading.Thread(target=run)
        thread.start()
        try:
            scenario(runner.held, stop.set)
        finally:
            stop.set()
            thread.join(timeout=10)
    else:

        async def run_async() -> None:
            store = backend.async_store()
            arunner = AsyncClaimingRunner(backend.open_async, store, config, lease_ttl=ttl)
            astop = asyncio.Event()
            loop = asyncio.get_running_loop()

            async def run() -> None:
                await arunner.run(AsyncIdle(projection), stop=astop)
                took["returned"] = time.monotonic()

            task = asyncio.create_task(run())
            try:
                await asyncio.to_thread(
                    scenario, arunner.held, lambda: loop.call_soon_threadsafe(astop.set)
                )
            finally:
                astop.set()
                await asyncio.wait_for(task, 10)

        asyncio.run(run_async())
    assert took["returned"] - took["asked"] < bound
