"""Private database servers that a test may stop, start and restart.

The shared servers on 127.0.0.1:5432/3306 serve every other test (and other
engineers' runs): they are never restarted. Tests that need a server to go
away start their own instance here, on a free loopback port with a temporary
data directory, and remove it afterwards.

PostgreSQL's ``initdb``/``pg_ctl`` refuse to run as root: as root they run as
the ``postgres`` user (``runuser``), with the data directory owned by it.
MariaDB runs as the current user (``--user=root`` when that is root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _pg_bin() -> Path:
    """Debian's newest /usr/lib/postgresql/<major>/bin, unless named."""
    if "PUPSOURCING_TEST_PG_BIN" in os.environ:
        return Path(os.environ["PUPSOURCING_TEST_PG_BIN"])
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    found.sort(key=lambda p: int(p.parent.name))
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
MARIADBD = os.environ.get("PUPSOURCING_TEST_MARIADBD", "/usr/sbin/mariadbd")
START_TIMEOUT = 60.0


class ServerUnavailable(Exception):
    """A private server could not be set up or started."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], what: str, timeout: float = START_TIMEOUT) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"{what}: {exc}") from exc
    if result.returncode != 0:
        raise ServerUnavailable(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def _cleaned_up_on_failure(init: Callable[..., None]) -> Callable[..., None]:
    """A server whose set-up fails removes what it made so far."""

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self.destroy()
            raise

    return wrapped


def _wait_until(ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"{what} did not come up within {timeout:.0f}s")
        time.sleep(0.05)


class PrivatePostgres:
    """A PostgreSQL cluster of our own: trust authentication on 127.0.0.1 only."""

    kind = "postgres"

    @_cleaned_up_on_failure
    def __init__(self) -> None:
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="pupsourcing-pg-"))
        self.started = False
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerUnavailable("running as root and there is no postgres user") from exc
            os.chown(self.datadir, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        data = str(self.datadir / "data")
        self._data = data
        _run(
            [
                *self._as_postgres,
                str(PG_BIN / "initdb"),
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        with open(Path(data) / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.datadir}'\n"
                "fsync = off\nmax_connections = 60\n"
            )
        self.start()

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _pg_ctl(self, *args: str) -> None:
        _run(
            [*self._as_postgres, str(PG_BIN / "pg_ctl"), "-D", self._data, "-w", *args],
            f"pg_ctl {args[-1]}",
        )

    def start(self) -> None:
        self._pg_ctl("-t", str(int(START_TIMEOUT)), "-l", str(self.datadir / "log"), "start")
        self.started = True

    def stop(self) -> None:
        """Fast shutdown: sessions are ended, open transactions rolled back."""
        self._pg_ctl("-m", "fast", "stop")
        self.started = False

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "-l", str(self.datadir / "log"), "restart")
        self.started = True

    def ensure_started(self) -> None:
        if not self.started:
            self.start()

    def destroy(self) -> None:
        if self.started:
            with contextlib.suppress(ServerUnavailable):
                self._pg_ctl("-m", "immediate", "stop")
            self.started = False
        shutil.rmtree(self.datadir, ignore_errors=True)


class PrivateMariaDB:
    """A MariaDB server of our own: root without a password on 127.0.0.1."""

    kind = "mysql"

    @_cleaned_up_on_failure
    def __init__(self, max_allowed_packet: str = "64M") -> None:
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="pupsourcing-mariadb-"))
        self.max_allowed_packet = max_allowed_packet
        self.process: subprocess.Popen[bytes] | None = None
        self._user = ["--user=root"] if os.geteuid() == 0 else []
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir / 'data'}",
                f"--tmpdir={self.datadir}",  # see start()
                *self._user,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "mariadb-install-db",
        )
        self.start()

    def connect(self, **kwargs: Any) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", **kwargs)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.datadir / "error.log").read_text(errors="replace")[-2000:]
            raise ServerUnavailable(f"mariadbd exited with {self.process.returncode}: {log}")
        try:
            self.connect(connect_timeout=1).close()
        except Exception:
            return False
        return True

    def start(self) -> None:
        try:
            self.process = subprocess.Popen(
                [
                    MARIADBD,
                    "--no-defaults",
                    f"--datadir={self.datadir / 'data'}",
                    f"--socket={self.datadir / 'mariadb.sock'}",
                    f"--pid-file={self.datadir / 'mariadb.pid'}",
                    f"--log-error={self.datadir / 'error.log'}",
                    # Its own tmpdir: at start-up mariadbd deletes every #sql*
                    # file in its tmpdir, which in the shared /tmp would pull
                    # the temporary tables from under the shared server's
                    # running queries ("Error on delete of '/tmp/#sql-...'").
                    f"--tmpdir={self.datadir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=64M",
                    "--innodb-flush-log-at-trx-commit=2",
                    f"--max-allowed-packet={self.max_allowed_packet}",
                    *self._user,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise ServerUnavailable(f"mariadbd: {exc}") from exc
        _wait_until(self._answers, "mariadbd")

    def stop(self) -> None:
        """A normal shutdown (SIGTERM): connections are closed, open
        transactions rolled back."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_started(self) -> None:
        if self.process is None:
            self.start()

    def destroy(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.datadir, ignore_errors=True)


PGBOUNCER = os.environ.get("PUPSOURCING_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")


class PrivatePgBouncer:
    """A PgBouncer of our own in transaction pooling mode (the common
    deployment; ``pool_mode="session"`` for session pooling, without a
    reset query: a server connection keeps what ``connect_query`` set), on
    a free loopback port, in front of a PostgreSQL server.

    ``databases`` maps each alias clients connect to (``dbname=alias``) to
    the settings of its ``[databases]`` line (``dbname``, ``connect_query``,
    ``pool_size``...). Trust authentication; as root it runs as ``postgres``
    (PgBouncer refuses to run as root)."""

    kind = "pgbouncer"

    @_cleaned_up_on_failure
    def __init__(
        self,
        databases: dict[str, dict[str, str]],
        server_host: str = "127.0.0.1",
        server_port: int = 5432,
        pool_mode: str = "transaction",
    ) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="pupsourcing-pgbouncer-"))
        if not os.access(PGBOUNCER, os.X_OK):
            raise ServerUnavailable(f"no PgBouncer at {PGBOUNCER} (apt-get install pgbouncer)")
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["-u", "postgres"]
            self.datadir.chmod(0o755)

        def quoted(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        lines = []
        for alias, settings in databases.items():
            fields = {"host": server_host, "port": str(server_port), "user": "postgres"}
            fields.update(settings)
            lines.append(f"{alias} = " + " ".join(f"{k}={quoted(v)}" for k, v in fields.items()))
        (self.datadir / "users.txt").write_text('"postgres" ""\n')
        self.ini = self.datadir / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n" + "\n".join(lines) + "\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.datadir / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\nadmin_users = postgres\n"
            "default_pool_size = 4\nmax_client_conn = 200\n"
            "server_login_retry = 1\nquery_wait_timeout = 30\nserver_reset_query =\n"
        )
        self.start()

    def dsn(self, alias: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={alias}"

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.datadir / "pgbouncer.log").read_text(errors="replace")[-2000:]
            raise ServerUnavailable(f"pgbouncer exited with {self.process.returncode}: {log}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self) -> None:
        try:
            with open(self.datadir / "pgbouncer.log", "ab") as log:
                self.process = subprocess.Popen(
                    [PGBOUNCER, *self._as, str(self.ini)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
        except OSError as exc:
            raise ServerUnavailable(f"pgbouncer: {exc}") from exc
        _wait_until(self._answers, "pgbouncer", timeout=15)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run ``command`` on PgBouncer's admin console (``SHOW POOLS``...)."""
        import psycopg

        with psycopg.connect(
            self.dsn("pgbouncer"), autocommit=True, prepare_threshold=None
        ) as conn:
            cursor = conn.cursor()
            cursor.execute(command, prepare=False)
            return list(cursor.fetchall()) if cursor.description else []

    def destroy(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.datadir, ignore_errors=True)
