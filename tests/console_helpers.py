"""A real ``pupsourcing ui`` server in a subprocess, and a store to show."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from cli_helpers import cli_argv, cli_env
from conftest import Backend, close_backend, make_backend
from helpers import event
from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.projection import ProcessorConfig

XSS = "<script>window.__pwned = true; alert(1)</script>"
TLS = ssl.create_default_context()
"""The TLS context every HTTP client of the tests shares (``verify=TLS``):
httpx otherwise makes one for each client, loading the CA certificates, some
25 ms of CPU per request. The console is served over plain HTTP."""
TRACED = {
    "causation_id": "cause-7",
    "correlation_id": "corr-8",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}
"""The ids of the event at position 13 (the others have none)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str
    stderr: str | None = None
    """What the server wrote to stderr, once stopped."""

    def stop(self) -> str:
        """Stop the server (SIGTERM), unless stopped already; its stderr."""
        if self.stderr is None:
            self.process.terminate()
            try:
                _, self.stderr = self.process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _, self.stderr = self.process.communicate()
        return self.stderr


def start_server(url: str, *args: str, token: str | None = None) -> Server:
    port = free_port()
    argv = cli_argv("ui", "--db", url, "--port", str(port), "--poll-interval", "0.2", *args)
    if token is not None:
        argv += ["--token", token]
    process = subprocess.Popen(
        argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}".encode()} if token else {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pupsourcing ui exited: {process.communicate()[1]}")
        try:
            if (
                httpx.get(f"{base}/api/head", headers=headers, timeout=2, verify=TLS).status_code
                == 200
            ):
                return Server(process, base)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"pupsourcing ui did not start: {process.communicate()[1]}")


PREFIX = "/console"
"""Where :func:`serve_mounted` serves the console."""


@dataclass
class ThreadServer:
    """uvicorn serving an application on a thread of this process."""

    server: Any
    thread: threading.Thread
    base: str
    root: str
    """What a client puts in front of the console's paths: :data:`PREFIX`
    for a mount; nothing with a root path, where the proxy in front has
    taken the prefix off (the console still puts it in its URLs)."""

    def url(self, path: str) -> str:
        return self.base + self.root + path

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def serve_mounted(backend: Backend, how: str, token: str | None = None) -> ThreadServer:
    """The console for ``backend``'s store served under :data:`PREFIX`:
    ``how`` is ``"mount"`` (a ``Mount`` in another Starlette application,
    which runs no lifespan for it) or ``"root-path"`` (uvicorn's
    ``--root-path``, as behind a proxy that strips the prefix)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from pupsourcing.console import create_app
    from pupsourcing.urls import database

    console = create_app(
        database(backend.url, backend.store.config, create=False), token=token, poll_interval=0.2
    )
    if how == "mount":
        outer = Starlette(
            routes=[
                Route("/", lambda request: PlainTextResponse("the outer application")),
                Mount(PREFIX, app=console),
            ]
        )
        return serve_app(outer, root="", client_root=PREFIX)
    return serve_app(console, root=PREFIX, client_root="")


def serve_app(app: Any, root: str = "", client_root: str = "") -> ThreadServer:
    """uvicorn serving ``app`` on a thread of this process (with ``root``
    as its root path), on a free port of 127.0.0.1."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        root_path=root,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    return ThreadServer(server, thread, f"http://127.0.0.1:{port}", client_root)


class Poisoned:
    """A projection whose handler fails on the aggregate ``poison``."""

    name = "billing"

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        if e.aggregate_id == "poison":
            raise RuntimeError("cannot bill poison")


class Quiet:
    name = "search"

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        pass


def seed(backend: Backend) -> None:
    """Events on a few aggregates (one payload holding markup and the
    :data:`TRACED` ids, one not JSON),
    a projection with a dead letter, a partitioned one behind, and a lease."""
    conn = backend.connect()
    try:
        store = backend.store
        for i in range(12):
            store.append(conn, ExpectedVersion.any(), [event(f"order-{i % 3}", data={"i": i})])
        noted = event("order-1", "Noted", data={"note": XSS}, **TRACED)
        store.append(conn, ExpectedVersion.any(), [noted])
        raw = Event("Shop", "Order", "blob-1", "Raw", b"\xff\x00", metadata=None)
        store.append(conn, ExpectedVersion.any(), [raw])
        store.append(conn, ExpectedVersion.any(), [event("poison", "Placed")])
        conn.commit()
    finally:
        conn.close()
    config = ProcessorConfig(max_attempts=1, on_failure="dead_letter")
    with backend.Processor(backend.connect, store, config) as processor:
        processor.catch_up(Poisoned())
    partition = ProcessorConfig(partition_key=0, total_partitions=2)
    with backend.Processor(backend.connect, store, partition) as processor:
        processor.catch_up(Quiet())
    conn = backend.connect()
    try:
        store.update_checkpoint(conn, "search_p1", 3)
        cursor = conn.cursor()
        cursor.execute(
            f"INSERT INTO {store.config.leases_table} "
            "(projection_name, partition_key, owner, expires_at, heartbeat) "
            "VALUES ('search', 1, 'worker-a', 1e12, 0)"
        )
        cursor.close()
        conn.commit()
    finally:
        conn.close()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


@contextlib.contextmanager
def serving(
    name: str,
    directory: Path,
    start: Callable[[Backend], S],
    prepare: Callable[[Backend], None] | None = None,
) -> Iterator[tuple[Backend, S]]:
    """A ``name`` store in ``directory``, filled by ``prepare``, and the
    console ``start`` serves it; both gone afterwards."""
    backend = make_backend(name, directory)
    try:
        if prepare is not None:
            prepare(backend)
        running = start(backend)
        try:
            yield backend, running
        finally:
            running.stop()
    finally:
        close_backend(backend)
