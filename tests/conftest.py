"""Fixtures for tests against real databases.

Every backend test gets its own empty store: a SQLite file in a temporary
directory, a PostgreSQL schema, or a MariaDB database (an emptied one is
reused by the worker's next test with the same config, see ``db_reuse``).
When a server cannot be reached the test is skipped locally, but fails under
``CI=true`` so CI never passes without having run it.

In modules marked ``pytestmark = pytest.mark.both_apis`` (the store and
projection acceptance suites), the ``backend`` and ``server`` fixtures run
each test against both APIs: ``sync`` (the blocking stores, ``Processor`` and
``Runner``) and ``async`` (the asyncio stores, ``AsyncProcessor`` and
``AsyncRunner`` on asyncio drivers, behind the blocking facade of
``aio_facade``). Those tests reach the processor and runner classes through
``backend.Processor`` and ``backend.Runner``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import os
import re
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings

import db_reuse
from pupsourcing.adapters import _registry as registry
from pupsourcing.projection import Processor
from pupsourcing.runner import Runner
from pupsourcing.store.config import StoreConfig

if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    # Many tests start Python processes (the CLI, bench scripts, examples,
    # spawned workers), each importing this checkout: without bytecode
    # written, every one compiles the same modules from source again. Keep
    # the tree as clean as PYTHONDONTWRITEBYTECODE asks, and write the
    # bytecode outside it instead, for the workers and every subprocess.
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(
        tempfile.gettempdir(), f"pupsourcing-tests-pycache-{os.getuid()}"
    )
    del os.environ["PYTHONDONTWRITEBYTECODE"]


def _one_pymysql_tls_context() -> None:
    """PyMySQL (1.2 and later) makes a TLS context for every connection in
    its default "preferred" mode, loading the system's CA certificates on
    each: some 40 ms of CPU a connection, and the tests open thousands.
    Make that context once per process; it is the same every time (no CA,
    no verification) and a connection only wraps its socket with it."""
    try:
        from pymysql.connections import Connection
    except ImportError:
        return
    create = getattr(Connection, "_create_ssl_ctx", None)
    if create is None:
        return
    made: dict[str, Any] = {}

    def once(self: Any, params: Any) -> Any:
        if isinstance(params, dict) and not params:
            if "default" not in made:
                made["default"] = create(self, params)
            return made["default"]
        return create(self, params)

    Connection._create_ssl_ctx = once
    PYMYSQL_OWN_TLS_CONTEXT.append(create)


PYMYSQL_OWN_TLS_CONTEXT: list[Any] = []
"""PyMySQL's own ``Connection._create_ssl_ctx``, before the patch above (for
a test of what the product does about it)."""
_one_pymysql_tls_context()

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""This process's pytest-xdist worker (``gw0``, ``gw1``...); empty when the
suite runs in one process (``-n 0``)."""


def _worker_database(dsn: str) -> str:
    """The name of this worker's database on the server of ``dsn``."""
    match = re.search(r"(?:^|\s)dbname=(\S+)", dsn)
    base = match.group(1) if match else "test"
    return f"{base}_{WORKER}" if WORKER else base


PG_SERVER_DSN = os.environ.get(
    "PUPSOURCING_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
"""The PostgreSQL test server and its database."""
PG_DATABASE = _worker_database(PG_SERVER_DSN)
PG_DSN = f"{PG_SERVER_DSN} dbname={PG_DATABASE}" if WORKER else PG_SERVER_DSN
"""This worker's database on the PostgreSQL test server (libpq takes the last
``dbname``): ``test_gw0`` and so on, or the server's own when serial."""
MYSQL_HOST = os.environ.get("PUPSOURCING_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_DATABASE = f"test_{WORKER}" if WORKER else "test"
"""This worker's database on the MariaDB/MySQL test server."""
IN_CI = os.environ.get("CI", "").lower() == "true"

BACKENDS = ["sqlite", "postgres", "mysql", "mysqlclient"]
"""Every store test runs on each. ``mysqlclient`` is MySQL through the
mysqlclient driver (``MySQLdb``) instead of PyMySQL: the adapter promises any
DB-API MySQL driver. Its backend's ``name`` is ``"mysql"``."""
APIS = ["sync", "async"]
ASYNC_DRIVERS = {a.name: a.async_driver for a in registry.ADAPTERS}
MYSQL_DRIVERS = {"mysql": "pymysql", "mysqlclient": "MySQLdb"}
"""The blocking driver module of each MySQL backend."""


EXTRAS = {
    "psycopg": "postgres",
    "pymysql": "mysql",
    "MySQLdb": "mysqlclient",
    "asyncmy": "asyncmy",
    "aiosqlite": "aiosqlite",
    "nats": "nats",
    "rich": "cli",
}
"""The extra of pyproject.toml that installs each driver module tests need;
any other module comes with the ``dev`` dependency group."""


def install_hint(module: str) -> str:
    """The command that installs ``module`` for the tests."""
    extra = EXTRAS.get(module.split(".")[0])
    return f"pip install -e '.[{extra}]'" if extra else "pip install -e . --group dev"


def require(module: str) -> Any:
    """Import a driver (skipped locally, failed under CI if missing); also at
    a test module's top level, in place of ``pytest.importorskip``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in (module, module.split(".")[0]):
            missing(f"{module} not installed ({install_hint(module)})")
        else:  # installed, but broken (a missing shared library, say)
            missing(f"{module} cannot be imported: {exc}")
        raise


# Profiles for the property-based tests of the store against real databases
# (each example costs round trips). "ci" keeps the whole suite within CI's
# budget; PUPSOURCING_HYPOTHESIS=thorough runs many more examples, e.g.
# before a release. Tests opt in with @settings(STORE_PROPERTIES).
settings.register_profile(
    "ci",
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    settings.get_profile("ci"),
    max_examples=500,
    stateful_step_count=50,
)
STORE_PROPERTIES = settings.get_profile(os.environ.get("PUPSOURCING_HYPOTHESIS", "ci"))


def missing(message: str) -> None:
    """Skip the test (or the module, at its top level) for something missing;
    fail instead under ``CI=true``."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: database tests must run)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def unavailable(what: str, exc: BaseException) -> None:
    """A database server (or other service) cannot be reached."""
    missing(f"{what} is not reachable: {exc}")


@dataclass
class Backend:
    """One empty store on one real database, and a way to open connections to it."""

    name: str
    store: Any
    """A blocking store (``SQLStore``), or the facade of an asyncio one."""
    connect: Callable[[], Any]
    open_async: Callable[[], Awaitable[Any]]
    """Opens an asyncio connection to the same database."""
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    database: str = ""
    """The database (MySQL) holding this backend's tables, if it has its own."""
    schema: str = ""
    """The schema (PostgreSQL) holding this backend's tables."""
    api: str = "sync"
    Processor: Callable[..., Any] = Processor
    Runner: Callable[[], Any] = Runner
    url: str = ""
    """The database URL naming this store (``pupsourcing.urls``)."""
    driver: str = ""
    """The module of the blocking driver: ``psycopg``, ``pymysql``, ``MySQLdb``
    or ``sqlite3``."""

    def connection(self) -> Any:
        conn = self.connect()
        self.cleanups.append(conn.close)
        return conn

    def scalar(self, sql: str) -> Any:
        """Run a query on a fresh connection and return the first column of the first row."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            conn.close()

    def count_events(self) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {self.store.config.events_table}"))

    def checkpoints(self) -> dict[str, int]:
        """Every checkpoint's position, by name."""
        conn = self.connect()
        try:
            return {c.name: c.position for c in self.store.list_checkpoints(conn)}
        finally:
            conn.close()

    def snapshot(self) -> tuple[Any, ...]:
        """Everything an append can change: the events' count and highest
        position, and every aggregate head."""
        config = self.store.config
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(
                f"SELECT count(*), COALESCE(max(global_position), 0) FROM {config.events_table}"
            )
            events = tuple(cursor.fetchone())
            cursor.execute(
                "SELECT bounded_context, aggregate_type, aggregate_id, aggregate_version "
                f"FROM {config.aggregate_heads_table} ORDER BY 1, 2, 3"
            )
            heads = tuple(tuple(row) for row in cursor.fetchall())
            cursor.close()
            return events, heads
        finally:
            conn.close()

    def set_autocommit(self, conn: Any, on: bool = True) -> None:
        """Switch a connection of this backend to (or from) autocommit mode."""
        if self.api == "async":
            raw = conn.raw
            if self.name == "sqlite":
                raw.isolation_level = None if on else ""
            elif self.name == "mysql":
                conn.loop.call(raw.autocommit(on))  # asyncmy
            else:
                conn.loop.call(raw.set_autocommit(on))  # psycopg AsyncConnection
        elif self.name == "sqlite":
            conn.isolation_level = None if on else ""
        elif self.name == "mysql":
            conn.autocommit(on)  # PyMySQL: a method
        else:
            conn.autocommit = on

    def session_sql(self) -> str:
        """A query for the server's id of the connection it runs on."""
        return "SELECT pg_backend_pid()" if self.name == "postgres" else "SELECT CONNECTION_ID()"

    def kill_session(self, session: int) -> None:
        """End a server connection (PostgreSQL, MySQL) and wait until it is gone."""
        if self.name == "postgres":
            self.scalar(f"SELECT pg_terminate_backend({int(session)})")
            alive = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(session)}"
        else:
            self.scalar(f"KILL {int(session)}")
            alive = f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = {int(session)}"
        deadline = time.monotonic() + 5
        while int(self.scalar(alive)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not int(self.scalar(alive)), f"session {session} is still alive"

    def async_store(self) -> Any:
        """An asyncio store of this backend's adapter and config."""
        require(ASYNC_DRIVERS[self.name])
        return registry.adapter(self.name).async_store_class(self.store.config)

    def use_async(self) -> None:
        """Switch this backend to the asyncio API behind the blocking facade."""
        from aio_facade import AsyncAPI, Store
        from aio_facade import Processor as FacadeProcessor
        from aio_facade import Runner as FacadeRunner

        store = self.async_store()
        api = AsyncAPI(self.open_async)
        self.cleanups.append(api.close)
        self.api = "async"
        self.store = Store(api.loop, store)
        self.connect = api.connect
        self.Processor = functools.partial(FacadeProcessor, api)
        self.Runner = functools.partial(FacadeRunner, api)


def sqlite_backend(tmp_path: Path, config: StoreConfig) -> Backend:
    from pupsourcing.adapters.sqlite import SQLiteStore, connect, connect_async

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "store.db"
    store = SQLiteStore(config)
    backend = Backend(
        "sqlite",
        store,
        lambda: connect(path),
        lambda: connect_async(path),
        url=f"sqlite:///{quote(str(path))}",
        driver="sqlite3",
    )
    conn = backend.connection()
    store.create_schema(conn)
    conn.commit()
    return backend


def pg_url(schema: str, dsn: str = PG_DSN) -> str:
    """A postgresql:// URL for the server of ``dsn`` whose search path is ``schema``."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    userinfo = quote(str(info.get("user", "")), safe="")
    if info.get("password"):
        userinfo += ":" + quote(str(info["password"]), safe="")
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    options = quote(f"-csearch_path={schema}", safe="")
    return f"postgresql://{userinfo}@{host}:{port}/{info.get('dbname', '')}?options={options}"


_admins: dict[str, Any] = {}
"""This process's admin connection to each shared test server, kept open
for emptying a backend's tables after each test (a new PostgreSQL session
costs the server a process and its caches; the tests open thousands)."""


def _with_admin(kind: str, connect: Callable[[], Any], use: Callable[[Any], Any]) -> Any:
    """``use(admin)`` on the kept admin connection of ``kind``, opened (again)
    when there is none or it was lost."""
    admin = _admins.get(kind)
    if admin is not None:
        try:
            return use(admin)
        except Exception:
            alive = not (admin.closed or admin.broken) if kind == "postgres" else admin.open
            if alive:
                raise
            _admins.pop(kind)
    _admins[kind] = admin = connect()
    return use(admin)


def postgres_backend(config: StoreConfig, server_dsn: str = PG_DSN) -> Backend:
    psycopg = require("psycopg")
    from pupsourcing.adapters.postgres import PostgresStore

    key = ("postgres", server_dsn, config)
    reused = db_reuse.take(key) if server_dsn == PG_DSN else None
    schema = reused or f"t_{uuid.uuid4().hex[:12]}"
    if not reused:
        try:
            admin = psycopg.connect(server_dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
            raise
        admin.execute(f"CREATE SCHEMA {schema}")
        admin.close()
    dsn = f"{server_dsn} options='-c search_path={schema}'"
    store = PostgresStore(config)
    backend = Backend(
        "postgres",
        store,
        lambda: psycopg.connect(dsn),
        lambda: psycopg.AsyncConnection.connect(dsn),
        url=pg_url(schema, server_dsn),
        driver="psycopg",
        schema=schema,
    )

    def drop(name: str = schema) -> None:
        # A fresh connection: the server may have been restarted since.
        with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as dropper:
            dropper.execute(f"DROP SCHEMA {name} CASCADE")

    def give_back() -> None:
        def empty() -> str | None:
            return _with_admin(
                "postgres",
                lambda: psycopg.connect(server_dsn, autocommit=True, connect_timeout=5),
                lambda admin: db_reuse.pg_empty(admin, schema),
            )

        db_reuse.give_back(key, schema, empty, drop)

    backend.cleanups.append(give_back if server_dsn == PG_DSN else drop)
    if reused:
        return backend
    conn = backend.connection()
    store.create_schema(conn)
    conn.commit()
    if server_dsn == PG_DSN:

        def layout() -> str:
            with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as admin:
                return db_reuse.pg_layout(admin, schema)

        db_reuse.remember_layout(key, layout)
    return backend


def mysql_admin(host: str = MYSQL_HOST, port: int = 3306) -> Any:
    """An autocommit PyMySQL connection to the test server (no database selected)."""
    pymysql = require("pymysql")
    try:
        return pymysql.connect(
            host=host, port=port, user="root", password="", autocommit=True, connect_timeout=5
        )
    except pymysql.err.OperationalError as exc:
        unavailable("MariaDB/MySQL", exc)
        raise


def mysql_backend(
    config: StoreConfig, host: str = MYSQL_HOST, port: int = 3306, driver: str = "pymysql"
) -> Backend:
    """A fresh database with a random name on the MariaDB/MySQL test server
    (or the one at ``host``:``port``), dropped afterwards; its blocking
    connections come from ``driver`` (``pymysql`` or ``MySQLdb``)."""
    module = require(driver)  # before anything is created

    from pupsourcing.adapters.mysql import MySQLStore

    key = ("mysql", host, port, config)
    shared = (host, port) == (MYSQL_HOST, 3306)
    reused = db_reuse.take(key) if shared else None
    database = reused or f"t_{uuid.uuid4().hex[:12]}"
    if not reused:
        admin = mysql_admin(host, port)
        admin.cursor().execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        admin.close()

    def connect() -> Any:
        # PyMySQL and mysqlclient take the same keyword arguments here.
        return module.connect(
            host=host,
            port=port,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
        )

    def open_async() -> Awaitable[Any]:
        import asyncmy

        return asyncmy.connect(  # type: ignore[no-any-return]
            host=host, port=port, user="root", password="", database=database, charset="utf8mb4"
        )

    store = MySQLStore(config)
    backend = Backend(
        "mysql",
        store,
        connect,
        open_async,
        url=f"mysql://root@{host}:{port}/{database}",
        driver=driver,
    )
    backend.database = database

    def drop(name: str = database) -> None:
        # A fresh connection: the server may have been restarted since.
        dropper = mysql_admin(host, port)
        try:
            dropper.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        finally:
            dropper.close()

    def give_back() -> None:
        def empty() -> str | None:
            return _with_admin(
                "mysql",
                lambda: mysql_admin(host, port),
                lambda admin: db_reuse.mysql_empty(admin, database),
            )

        db_reuse.give_back(key, database, empty, drop)

    backend.cleanups.append(give_back if shared else drop)
    if reused:
        return backend
    conn = backend.connection()
    store.create_schema(conn)
    conn.commit()
    if shared:

        def layout() -> str:
            admin = mysql_admin(host, port)
            try:
                return db_reuse.mysql_layout(admin, database)
            finally:
                admin.close()

        db_reuse.remember_layout(key, layout)
    return backend


def make_backend(
    name: str, tmp_path: Path, config: StoreConfig | None = None, api: str = "sync"
) -> Backend:
    """A backend with an empty store (schema created with the blocking API)."""
    config = config or StoreConfig()
    if api == "async":
        require(ASYNC_DRIVERS[name])  # before anything is created
    if name == "sqlite":
        backend = sqlite_backend(tmp_path, config)
    elif name == "postgres":
        backend = postgres_backend(config)
    elif name in MYSQL_DRIVERS:
        backend = mysql_backend(config, driver=MYSQL_DRIVERS[name])
    else:
        raise ValueError(name)
    if api == "async":
        backend.use_async()
    elif api != "sync":
        raise ValueError(api)
    return backend


SERVERS = ["postgres", "mysql", "mysqlclient"]


def backends_and_apis(names: list[str], apis: list[str] = APIS) -> list[Any]:
    """``(name, api)`` parameters for the given databases and APIs (the id is
    the database's name alone when only the blocking API runs)."""
    return [
        pytest.param((name, api), id=name if apis == ["sync"] else f"{name}-{api}")
        for name in names
        for api in apis
        if api == "sync" or name in ASYNC_DRIVERS  # mysqlclient has no asyncio API
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend`` is every database, ``server`` the databases with a server;
    in modules marked ``both_apis`` each with the blocking and the asyncio API."""
    apis = APIS if metafunc.definition.get_closest_marker("both_apis") else ["sync"]
    direct = set()  # names a test parametrizes itself (a plain "server" argument, say)
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        direct.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    for fixture, databases in (("backend", BACKENDS), ("server", SERVERS)):
        if fixture in metafunc.fixturenames and fixture not in direct:
            metafunc.parametrize(fixture, backends_and_apis(databases, apis), indirect=True)


@contextlib.contextmanager
def made_backend(
    name: str, tmp_path: Path, config: StoreConfig | None = None, api: str = "sync"
) -> Iterator[Backend]:
    """:func:`make_backend`, dropped again on exit."""
    b = make_backend(name, tmp_path, config, api)
    try:
        yield b
    finally:
        close_backend(b)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name, api = request.param
    with made_backend(name, tmp_path, api=api) as b:
        yield b


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend on a database server (several connections write at once)."""
    name, api = request.param
    with made_backend(name, tmp_path, api=api) as b:
        yield b


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Backend]:
    b = make_backend("sqlite", tmp_path)
    yield b
    for cleanup in reversed(b.cleanups):
        cleanup()


def _private_server(factory: Callable[[], Any], what: str) -> Iterator[Any]:
    from private_servers import ServerUnavailable

    try:
        server = factory()
    except ServerUnavailable as exc:
        unavailable(f"a private {what} server", exc)
        raise
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[Any]:
    """A PostgreSQL server of this test session's own, which tests may
    restart (never the shared one); see ``private_servers``."""
    from private_servers import PrivatePostgres

    yield from _private_server(PrivatePostgres, "PostgreSQL")


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[Any]:
    """A MariaDB server of this test session's own, with a 64 MB
    max_allowed_packet; see ``private_servers``."""
    from private_servers import PrivateMariaDB

    yield from _private_server(PrivateMariaDB, "MariaDB")


def private_backend(server: Any, config: StoreConfig | None = None) -> Backend:
    """An empty store on a private server (a fresh schema or database)."""
    config = config or StoreConfig()
    if server.kind == "postgres":
        return postgres_backend(config, server.dsn)
    return mysql_backend(config, "127.0.0.1", server.port)


def close_backend(backend: Backend) -> None:
    for cleanup in reversed(backend.cleanups):
        cleanup()


@pytest.fixture
def make_store_backend(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """Build a backend by name with a custom config."""
    made: list[Backend] = []

    def make(name: str, config: StoreConfig | None = None, api: str = "sync") -> Backend:
        b = make_backend(name, tmp_path / f"{name}-{len(made)}", config, api)
        made.append(b)
        return b

    yield make
    for b in made:
        for cleanup in reversed(b.cleanups):
            cleanup()


# -- running in parallel (pytest-xdist) ----------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: three workers per CPU, at most 8 (the tests mostly wait on
    databases, subprocesses and sleeps: with two per CPU, a 2-core machine
    sat 15% idle through a run, and three took a sixth off its wall time);
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return min(8, 3 * len(os.sched_getaffinity(0)))


SLOW_TESTS = (
    "test_bench.py::test_run_all_writes",
    "test_eventmap_runtime.py::test_every_event_round_trips_exactly",
    "test_relay_nats.py::test_sigkill_at_any_moment",
    "test_bench.py::test_projection_benchmark",
    "test_docs.py::test_docs_site_builds_strictly",
    "test_bench.py::test_scale_benchmark",
    "test_store_model.py::test_store_behaves_like_the_model",
    "test_bench.py::test_console_load",
    "test_console_browser.py::",
    "test_bench.py::test_push_latency",
    "test_postgres_store.py::test_an_append_too_large",
    "test_cli_run.py::test_partitions_restart_crashed_workers",
    "test_db_restart.py::test_processor_rides_out",
    "test_examples.py::test_example_runs[scaling]",
    "test_claiming.py::test_claiming_workers_share",
    "test_crash_recovery.py::test_sigkill_mid_batch",
    "test_aio.py::test_mypy_strict",
    "test_bench.py::test_load_test",
    "test_examples.py::test_example_runs[self_balancing]",
    "test_cli_run.py::test_partitions_stop_mid_way",
    "test_bench.py::test_relay_benchmark",
    "test_hostile_input.py::test_ten_megabytes_round_trip_on_mysql_longblob",
    "test_relay_nats.py::test_a_restarted_nats_server",
    "test_cli_dead_letters.py::test_supervisor_gives_up",
    "test_push.py::test_postgres_processor_held_back",
    "test_processor_faults.py::test_two_processors_on_one_projection",
    "test_push.py::test_append_in_this_process_wakes",
)
"""Node id beginnings of the slowest tests (measured), slowest first."""


def _slowness(item: pytest.Item) -> int | None:
    nodeid = item.nodeid.removeprefix("tests/")
    return next((i for i, p in enumerate(SLOW_TESTS) if nodeid.startswith(p)), None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the slowest tests first, spread over the workers: worksteal
    hands each worker a contiguous share of the list first, and a long test
    left for the end of a share would keep the run waiting on it alone."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    slow = sorted((i for i in items if _slowness(i) is not None), key=_slowness)
    rest = iter([i for i in items if _slowness(i) is None])
    shares: list[list[pytest.Item]] = [slow[w::workers] for w in range(workers)]
    ordered: list[pytest.Item] = []
    left = len(items)
    for w, share in enumerate(shares):
        size = left // (workers - w)  # as worksteal splits the list first
        left -= size
        ordered += share + list(itertools.islice(rest, max(0, size - len(share))))
    items[:] = ordered + list(rest)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A worker makes its own databases (kept for the next run; another
    run's worker of the same name may be using them) and hands them to the
    subprocesses that tests start."""
    if not WORKER:
        return
    _create_pg_database()
    _create_mysql_database()
    os.environ["PUPSOURCING_TEST_PG"] = PG_DSN


def _create_pg_database() -> None:
    """Create this worker's PostgreSQL database unless it exists. Errors are
    left for the tests to report (``unavailable``)."""
    try:
        import psycopg
        from psycopg import errors
    except ImportError:
        return
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(PG_SERVER_DSN, autocommit=True, connect_timeout=5) as admin,
    ):
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
            return
        for _ in range(20):  # another worker copying template1 at once can be refused
            try:
                admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                return
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                return
            except errors.ObjectInUse:
                time.sleep(0.25)


def _create_mysql_database() -> None:
    try:
        import pymysql
    except ImportError:
        return
    with contextlib.suppress(pymysql.Error):
        admin = pymysql.connect(
            host=MYSQL_HOST, user="root", password="", autocommit=True, connect_timeout=5
        )
        try:
            admin.cursor().execute(
                f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE} CHARACTER SET utf8mb4"
            )
        finally:
            admin.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the databases kept for reuse (see ``db_reuse``), and close the
    kept admin connections."""
    db_reuse.drop_all()
    for admin in _admins.values():
        with contextlib.suppress(Exception):
            admin.close()
    _admins.clear()
