"""Latency of the web console (``pupsourcing ui``) on a large PostgreSQL store.

    python bench/console_load.py [--quick] [--events 1000000] [--requests 300] [--target-ms 50]

Loads ``--events`` events (10 per aggregate, ~120-byte JSON payloads) with
COPY into a private schema, with 50 projection partitions (5 projections of
10 partitions, at various positions, some leased), and 100 dead letters;
then starts the real ``pupsourcing ui`` command on a free port and times
``--requests`` sequential requests to the overview page and to each API
endpoint over one keep-alive HTTP connection (httpx).

Reported per endpoint: p50, p99 and max latency in milliseconds, measured
from the client (HTTP, JSON encoding and the database round trips). The
target is a p99 under 50 ms (``--target-ms``): a run that misses it exits 1. Each response is
checked (status 200 and the expected shape); a wrong answer exits non-zero.
The schema on the server named by ``PUPSOURCING_BENCH_PG`` is dropped at the
end. ``--quick`` loads 20,000 events and makes 20 requests per endpoint
(unless ``--events`` or ``--requests`` say otherwise; tests/test_bench.py):
a smoke run, which reports the target without failing on it (its 20
requests say little of a p99, and a loaded machine would fail it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from common import UNAVAILABLE_EXIT_CODE, Unavailable
from postgres_store import DSN, PrivateSchema, private_schema

PER_AGGREGATE = 10
PROJECTIONS = 5
PARTITIONS = 10
DEAD_LETTERS = 100
TARGET_MS = 50.0


def load(schema: PrivateSchema, events: int) -> int:
    """``events`` events and their aggregates' heads, by COPY; the head."""
    import psycopg

    aggregates = max(events // PER_AGGREGATE, 1)
    start = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(schema.dsn) as conn:
        with conn.cursor() as cursor:
            columns = (
                "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, "
                "event_type, event_version, payload, metadata, created_at"
            )
            with cursor.copy(f"COPY events ({columns}) FROM STDIN") as copy:
                for n in range(events):
                    version, aggregate = divmod(n, aggregates)
                    payload = json.dumps(
                        {
                            "order": aggregate,
                            "line": version,
                            "sku": f"SKU-{n % 977:04d}",
                            "quantity": n % 7 + 1,
                            "note": "console benchmark",
                        }
                    ).encode()
                    copy.write_row(
                        (
                            "Shop",
                            "Order",
                            f"order-{aggregate:07d}",
                            version + 1,
                            uuid.uuid4(),
                            "LineAdded",
                            1,
                            payload,
                            '{"user": "bench"}',
                            start + timedelta(milliseconds=n),
                        )
                    )
            with cursor.copy(
                "COPY aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
                "aggregate_version) FROM STDIN"
            ) as copy:
                for aggregate in range(aggregates):
                    version = events // aggregates + (1 if aggregate < events % aggregates else 0)
                    copy.write_row(("Shop", "Order", f"order-{aggregate:07d}", version))
        conn.commit()
        row = conn.execute("SELECT MAX(global_position) FROM events").fetchone()
        assert row is not None
        head = int(row[0])
        rng = random.Random(7)
        for p in range(PROJECTIONS):
            for k in range(PARTITIONS):
                conn.execute(
                    "INSERT INTO projection_checkpoints (projection_name, last_global_position) "
                    "VALUES (%s, %s)",
                    (f"projection_{p}_p{k}", head - rng.randrange(0, max(head // 10, 1))),
                )
                if k % 2 == 0:
                    conn.execute(
                        "INSERT INTO projection_leases (projection_name, partition_key, owner, "
                        "expires_at, heartbeat) VALUES (%s, %s, %s, 1e12, 0)",
                        (f"projection_{p}", k, f"worker-{k % 3}"),
                    )
        for d in range(DEAD_LETTERS):
            conn.execute(
                "INSERT INTO projection_dead_letters (projection_name, global_position, "
                "event_id, error_type, error_message, traceback, attempts) "
                "VALUES (%s, %s, %s, 'RuntimeError', 'cannot handle it', %s, 3)",
                (
                    f"projection_{d % PROJECTIONS}_p{d % PARTITIONS}",
                    d + 1,
                    uuid.uuid4(),
                    "Traceback (most recent call last):\n  ...\nRuntimeError: cannot handle it",
                ),
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return head


def url_of(schema: PrivateSchema) -> str:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(DSN)
    user = quote(str(info.get("user", "")), safe="")
    if info.get("password"):
        user += ":" + quote(str(info["password"]), safe="")
    options = quote(f"-csearch_path={schema.name}", safe="")
    host, port = info.get("host", "127.0.0.1"), info.get("port", 5432)
    return f"postgresql://{user}@{host}:{port}/{info.get('dbname', '')}?options={options}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(url: str) -> tuple[subprocess.Popen[str], str]:
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pupsourcing", "ui", "--db", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pupsourcing ui exited: {process.communicate()[1]}")
        try:
            httpx.get(base + "/api/head", timeout=5).raise_for_status()
            return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("pupsourcing ui did not start")


Check = Callable[[Any], bool]


def endpoints(
    head: int, aggregates: int
) -> list[tuple[str, Callable[[random.Random], str], Check]]:
    """(label, path for a random generator, check of the response)."""

    def aggregate(rng: random.Random) -> str:
        return f"order-{rng.randrange(aggregates):07d}"

    return [
        ("overview page (HTML)", lambda r: "/", lambda body: "Overview" in body),
        (
            "GET /api/overview",
            lambda r: "/api/overview",
            lambda d: len(d["projections"]) == PROJECTIONS * PARTITIONS,
        ),
        ("GET /api/head", lambda r: "/api/head", lambda d: d["head"] >= head),
        (
            "GET /api/projections",
            lambda r: "/api/projections",
            lambda d: len(d) == PROJECTIONS * PARTITIONS,
        ),
        (
            "GET /api/streams/... (10 events)",
            lambda r: f"/api/streams/Shop/Order/{aggregate(r)}",
            lambda d: len(d["events"]) == d["version"] > 0,
        ),
        (
            "GET /api/events?after=N&limit=100",
            lambda r: f"/api/events?after={r.randrange(head)}&limit=100",
            lambda d: 0 < len(d) <= 100,
        ),
        ("GET /api/log (newest 50)", lambda r: "/api/log?limit=50", lambda d: len(d) == 50),
        (
            "GET /api/log?before=N",
            lambda r: f"/api/log?before={r.randrange(100, head)}&limit=50",
            lambda d: len(d) == 50,
        ),
        (
            "GET /api/aggregates (exact id)",
            lambda r: f"/api/aggregates?prefix={aggregate(r)}",
            lambda d: len(d) == 1,
        ),
        (
            "GET /api/aggregates (prefix, type)",
            lambda r: (
                f"/api/aggregates?prefix={aggregate(r)[:-2]}&bounded_context=Shop&aggregate_type=Order"
            ),
            lambda d: len(d) >= 1,
        ),
        ("GET /api/dead-letters", lambda r: "/api/dead-letters", lambda d: len(d) == DEAD_LETTERS),
    ]


def measure(base: str, head: int, aggregates: int, requests: int) -> list[tuple[str, list[float]]]:
    import httpx

    rng = random.Random(11)
    results: list[tuple[str, list[float]]] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for label, path, check in endpoints(head, aggregates):
            for _ in range(5):  # warm the connection and the caches
                client.get(path(rng))
            times: list[float] = []
            for _ in range(requests):
                target = path(rng)
                started = time.perf_counter()
                response = client.get(target)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{target}: {response.status_code} {response.text[:200]}")
                is_html = response.headers["content-type"].startswith("text/html")
                if not check(response.text if is_html else response.json()):
                    raise RuntimeError(f"{target}: unexpected answer {response.text[:200]}")
                times.append(elapsed * 1000)
            results.append((label, times))
    return results


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, help="default 1,000,000 (--quick: 20,000)")
    parser.add_argument("--requests", type=int, help="default 300 (--quick: 20)")
    parser.add_argument("--target-ms", type=float, default=TARGET_MS, help="the p99 target")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 1_000_000)
    requests = args.requests or (20 if args.quick else 300)
    try:
        schema = private_schema()
    except Unavailable as exc:
        print(f"PostgreSQL unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    process = None
    try:
        began = time.perf_counter()
        head = load(schema, events)
        print(
            f"loaded {events:,} events, {PROJECTIONS * PARTITIONS} projection partitions, "
            f"{DEAD_LETTERS} dead letters in {time.perf_counter() - began:.1f} s"
        )
        process, base = start(url_of(schema))
        results = measure(base, head, max(events // PER_AGGREGATE, 1), requests)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=15)
        schema.close()
    print(f"\n{requests} sequential requests per endpoint, one keep-alive connection\n")
    print(f"{'endpoint':<38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    worst = 0.0
    for label, times in results:
        p99 = percentile(times, 0.99)
        worst = max(worst, p99)
        print(f"{label:<38} {statistics.median(times):>8.1f} {p99:>8.1f} {max(times):>8.1f}")
    met = worst < args.target_ms
    verdict = "met" if met else "NOT met"
    print(f"\nworst p99 {worst:.1f} ms: target p99 < {args.target_ms:g} ms {verdict}")
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
