"""Make docs/console.png: the console's overview of a small demo store.

    python tools/console_screenshot.py [--output docs/console.png]

Builds a SQLite store in a temporary directory (orders, a partitioned
projection with leased partitions, one behind, a dead letter), starts the
real ``pupsourcing ui`` on a free port, appends events for a few seconds so
the events/s figures move, and has Chromium (Playwright, Debian's
``/usr/bin/chromium``) photograph the overview.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.projection import Processor, ProcessorConfig

ROOT = Path(__file__).resolve().parent.parent


def order_event(n: int, rng: random.Random) -> Event:
    kind = rng.choice(["OrderPlaced", "LineAdded", "LineAdded", "OrderPaid", "OrderShipped"])
    data = {"order": f"order-{n % 40:04d}", "sku": f"SKU-{rng.randrange(999):03d}", "qty": 1}
    return Event("Shop", "Order", f"order-{n % 40:04d}", kind, json.dumps(data).encode())


class Billing:
    name = "billing"

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        if e.global_position == 57:
            raise ValueError("unknown currency 'XXX'")


class Search:
    name = "search_index"

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        pass


class Emails:
    name = "emails"

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        pass


def build(path: Path) -> None:
    store, rng = SQLiteStore(), random.Random(3)
    conn = connect(path)
    store.create_schema(conn)
    for n in range(400):
        store.append(conn, ExpectedVersion.any(), [order_event(n, rng)])
    conn.commit()
    factory = lambda: connect(path)  # noqa: E731
    dead = ProcessorConfig(max_attempts=3, on_failure="dead_letter")
    with Processor(factory, store, dead) as processor:
        processor.catch_up(Billing())
    with Processor(factory, store) as processor:
        processor.catch_up(Emails())
    for key in range(4):
        with Processor(factory, store, ProcessorConfig(partition_key=key, total_partitions=4)) as p:
            p.catch_up(Search())
    store.update_checkpoint(conn, "search_index_p3", 310)
    store.update_checkpoint(conn, "emails", 362)
    for key, owner in enumerate(["worker-a", "worker-a", "worker-b", "worker-b"]):
        conn.execute(
            f"INSERT INTO {store.config.leases_table} (projection_name, partition_key, owner, "
            "expires_at, heartbeat) VALUES ('search_index', ?, ?, ?, 0)",
            (key, owner, time.time() + 3600),
        )
    conn.commit()
    conn.close()


def keep_appending(path: Path, stop: threading.Event) -> None:
    store, rng, conn = SQLiteStore(), random.Random(5), connect(path)
    n = 400
    while not stop.is_set():
        store.append(conn, ExpectedVersion.any(), [order_event(n, rng)])
        conn.commit()
        n += 1
        time.sleep(rng.uniform(0.02, 0.12))
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Photograph the console's overview.")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "console.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.db"
        build(path)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pupsourcing",
                "ui",
                "--db",
                f"sqlite:///{path}",
                "--port",
                str(port),
            ]
        )
        stop = threading.Event()
        writer = threading.Thread(target=keep_appending, args=(path, stop))
        writer.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1180, "height": 640})
                time.sleep(1.5)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("table")
                time.sleep(25)  # some history for the events/s figures
                page.screenshot(path=str(args.output))
                browser.close()
        finally:
            stop.set()
            writer.join()
            server.terminate()
            server.wait(timeout=15)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
