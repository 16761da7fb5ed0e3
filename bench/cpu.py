"""CPU time spent on a workload, client and database server together: a
figure the machine's speed and its other load affect far less than a rate.

The client's share is the process CPU time (every thread); the server's is
read from ``/proc/<pid>/schedstat`` of the processes or threads serving the
workload's connections: PostgreSQL's backends (``pg_backend_pid()``, the
``pg_stat_activity.pid`` of the connection) and MariaDB's connection threads
(``performance_schema.threads.THREAD_OS_ID``, when the server shares this
machine and has the performance schema on). SQLite runs in the client. A
server whose processes cannot be read counts as 0 and :attr:`CpuClock.complete`
says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> float | None:
    """CPU seconds of a process or thread so far, or ``None`` when it cannot
    be read (another machine, ended). From ``/proc/<pid>/schedstat`` (the
    scheduler's run time, in nanoseconds) where the kernel has it: ``stat``
    counts user and system time in clock ticks (10 ms), as coarse as a
    partition worker's whole share of a W5 run is long."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def server_pid(conn: Any) -> int | None:
    """The pid (or thread id) serving ``conn`` on the database server, when
    it runs on this machine; ``None`` for SQLite and unreadable servers."""
    info = getattr(conn, "info", None)
    if info is not None and hasattr(info, "backend_pid"):  # psycopg
        pid = int(info.backend_pid)
    elif hasattr(conn, "thread_id"):  # PyMySQL
        cursor = conn.cursor()
        try:
            cursor.execute(
                "SELECT THREAD_OS_ID FROM performance_schema.threads "
                "WHERE PROCESSLIST_ID = CONNECTION_ID()"
            )
            row = cursor.fetchone()
        except Exception:
            return None
        finally:
            cursor.close()
        if not row or row[0] is None:
            return None
        pid = int(row[0])
    else:
        return None
    return pid if proc_cpu(pid) is not None else None


class CpuClock:
    """CPU seconds used by this process and by the server for ``connections``
    between :meth:`start` and :meth:`stop`."""

    def __init__(self, connections: Sequence[Any]) -> None:
        self.pids = [server_pid(conn) for conn in connections]
        self.complete = all(pid is not None for pid in self.pids) or not any(
            hasattr(conn, "info") or hasattr(conn, "thread_id") for conn in connections
        )
        """Whether every connection's server side is counted (or runs in the client)."""
        self._client = 0.0
        self._server = 0.0

    def _server_now(self) -> float:
        return sum(proc_cpu(pid) or 0.0 for pid in self.pids if pid is not None)

    def start(self) -> None:
        self._client = time.process_time()
        self._server = self._server_now()

    def stop(self) -> float:
        """CPU seconds since :meth:`start`, client and server."""
        return time.process_time() - self._client + self._server_now() - self._server
