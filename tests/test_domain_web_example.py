"""examples/domain_web: the Starlette service on every database, through
Starlette's TestClient: commands, 404 and 409, and concurrent requests on one
order that all land exactly once (lost races retried)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from conftest import Backend

MAIN = Path(__file__).parent.parent / "examples" / "domain_web" / "main.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("domain_web_example", MAIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["domain_web_example"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "backend",
    [("sqlite", "sync"), ("postgres", "sync"), ("mysql", "sync")],
    indirect=True,
    ids=["sqlite", "postgres", "mysql"],
)
def test_the_service_applies_every_request_exactly_once(
    example: ModuleType, backend: Backend
) -> None:
    with TestClient(example.create_app(backend.url)) as client:
        placed = client.post("/orders", json={"order_id": "o-1", "customer": "ada"})
        assert placed.status_code == 201
        assert placed.json()["version"] == 1
        assert client.post("/orders", json={"order_id": "o-1", "customer": "x"}).status_code == 409
        assert client.get("/orders/none").status_code == 404

        def add(n: int) -> int:
            body = {"sku": f"s{n % 4}", "price": "1.25", "quantity": 1}
            return client.post("/orders/o-1/items", json=body).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(add, range(24)))
        assert codes == [200] * 24
        shown = client.get("/orders/o-1").json()
        assert shown["version"] == 25
        assert shown["total"] == "30.00"
        assert sum(shown["items"].values()) == 24
        too_many = client.post("/orders/o-1/items", json={"sku": "x", "price": "1", "quantity": 80})
        assert too_many.status_code == 409
        assert "at most 100" in too_many.json()["error"]
    assert backend.count_events() == 25
