"""The generated DDL, byte for byte, for every database.

The Go library shares these tables, so the schema must not drift by accident:
``migrate-gen``'s script (which holds every ``create_schema`` statement) is
compared with the golden files in ``tests/schema/``. After an intended change,
regenerate them with ``PUPSOURCING_UPDATE_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pupsourcing.adapters._registry import ADAPTERS
from pupsourcing.store.config import StoreConfig

GOLDEN = Path(__file__).parent / "schema"
CUSTOM = StoreConfig(
    events_table="shop_events",
    checkpoints_table="shop_checkpoints",
    aggregate_heads_table="shop_heads",
)


def rendered(adapter: str, variant: str) -> str:
    dialect = next(a for a in ADAPTERS if a.name == adapter).dialect_class
    if variant == "default":
        return dialect.render_schema(StoreConfig())
    script = dialect.render_schema(CUSTOM)
    if dialect.schema_dialect.partial_indexes:
        script += "\n" + dialect.render_partition_indexes(CUSTOM, 4)
    script += "\n" + "".join(f"{sql};\n" for _, sql in dialect.schema(CUSTOM))
    return script


@pytest.mark.parametrize("variant", ["default", "custom"])
@pytest.mark.parametrize("adapter", [a.name for a in ADAPTERS])
def test_schema_is_byte_identical_to_the_golden_file(adapter: str, variant: str) -> None:
    path = GOLDEN / f"{adapter}_{variant}.sql"
    script = rendered(adapter, variant)
    if os.environ.get("PUPSOURCING_UPDATE_GOLDEN") == "1":
        path.write_text(script, encoding="utf-8")
    assert path.read_bytes() == script.encode("utf-8"), f"{path.name} differs"
