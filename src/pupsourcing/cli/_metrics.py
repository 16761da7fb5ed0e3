"""``projections run --metrics-port PORT``: Prometheus text on ``/metrics``.

One process serves every partition. A single process (and ``--claim``, whose
partitions are threads of it) serves its own registry. With ``--partitions
N`` the supervisor serves and its workers only write: they run in
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a
directory the supervisor makes and removes), the supervisor adds up their
files at each scrape and forgets a worker's gauges when it exits. The dead
letters are counted in the database at each scrape.

A supervisor killed outright (SIGKILL) cannot remove its directory: the next
one does. The supervisor and its workers hold a lock on the directory's
``supervisor.lock`` (one open file, inherited) until the last of them exits,
so a directory of this user's whose lock can be taken has no process left.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pupsourcing.cli.errors import CommandError
from pupsourcing.urls import Database

logger = logging.getLogger("pupsourcing.cli")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "pupsourcing-metrics-"
LOCK = "supervisor.lock"


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs pupsourcing[metrics])",
    )
    group.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="the address --metrics-port listens on (default 0.0.0.0: every interface)",
    )
    # A supervised worker of a supervisor serving metrics: write them, serve nothing.
    group.add_argument("--metrics-child", action="store_true", help=argparse.SUPPRESS)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535, got {value}")
    return value


def _import() -> Any:
    try:
        from pupsourcing import metrics
    except ImportError as exc:
        if exc.name != "prometheus_client":
            raise
        raise CommandError(
            "--metrics-port needs prometheus-client: pip install 'pupsourcing[metrics]'"
        ) from None
    return metrics


def check_available(args: argparse.Namespace) -> None:
    """Fail before anything starts when metrics are asked for but not installed."""
    if args.metrics_port is not None or args.metrics_child:
        _import()


@contextlib.contextmanager
def serving(
    args: argparse.Namespace, db: Database, names: Iterable[str] | Callable[[], Iterable[str]]
) -> Iterator[None]:
    """In one process: the metrics of this process's stores and processors,
    served on ``--metrics-port`` (written only, with ``--metrics-child``),
    and the dead letters of ``names``, projections or checkpoints (see
    :class:`~pupsourcing.metrics.DeadLettersCollector`)."""
    if args.metrics_port is None and not args.metrics_child:
        yield
        return
    metrics = _import()
    if args.metrics_child:
        metrics.enable(registry=None)  # multiprocess mode: the files are the registry
        try:
            yield
        finally:
            metrics.disable()
        return
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics.enable(registry)
    registry.register(metrics.DeadLettersCollector(db.connect, db.store, names))
    try:
        with _http(args, registry):
            yield
    finally:
        metrics.disable()


@contextlib.contextmanager
def supervising(
    args: argparse.Namespace,
    db: Database,
    env: dict[str, str],
    names: Sequence[str],
    inherited: list[int],
) -> Iterator[Any]:
    """For ``--partitions``: a multiprocess directory for the workers (set in
    ``env``, its lock's descriptor added to ``inherited``, the descriptors
    the workers keep open), served on ``--metrics-port`` with the dead
    letters of the projections ``names``. Yields what to call with a
    worker's pid when it exits (``None`` without metrics)."""
    if args.metrics_port is None:
        yield None
        return
    metrics = _import()
    from prometheus_client import CollectorRegistry, multiprocess

    _remove_abandoned()
    directory = tempfile.mkdtemp(prefix=PREFIX)
    lock = _lock(directory)
    inherited.append(lock)
    env[MULTIPROC_ENV] = directory
    registry = CollectorRegistry()
    registry.register(_WorkerFiles(directory))
    registry.register(metrics.DeadLettersCollector(db.connect, db.store, names))

    def exited(pid: int) -> None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]

    try:
        with _http(args, registry):
            yield exited
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


def _lock(directory: str) -> int:
    """``directory``'s lock file, made and locked: a descriptor to keep open."""
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another start looks at it
    os.write(fd, f"{os.getpid()}\n".encode())  # not empty: made whole
    return fd


def _remove_abandoned() -> None:
    """Remove the directories of this user's supervisors that are gone with
    all their workers (their lock is free). One without a lock file (not
    ours), or with an empty one (being made), stays."""
    for path in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), PREFIX + "*")):
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_size == 0:
                continue
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed %s, left by a supervisor that was killed", path)
        except OSError:  # locked: in use
            continue
        finally:
            os.close(fd)


class _WorkerFiles:
    """The workers' metric files added up, as prometheus-client's
    ``MultiProcessCollector`` does, but for the files still empty: a worker
    makes its file before it sizes it, and a scrape in between (or ever
    after, if the worker was killed then) failed whole on one
    (prometheus/client_python#1199). An empty file holds no samples yet."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        files = [f for f in glob.glob(os.path.join(self.directory, "*.db")) if _sized(f)]
        merged: Iterable[Any] = multiprocess.MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return merged


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a dead worker's live gauges, just removed
        return False


@contextlib.contextmanager
def _http(args: argparse.Namespace, registry: Any) -> Iterator[None]:
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(args.metrics_port, args.metrics_host, registry)
    except OSError as exc:
        raise CommandError(
            f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port} ({exc})"
        ) from None
    host, port = server.server_address[:2]
    logger.info("serving metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
