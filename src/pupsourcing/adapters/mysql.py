"""MySQL / MariaDB adapter (any DB-API MySQL driver; tested with PyMySQL).

Work in progress (issue 4): only the schema is defined so far, so that
``migrate-gen --adapter mysql`` can write it.
"""

from __future__ import annotations

from pupsourcing.store.dialect import Dialect
from pupsourcing.store.schema import SchemaDialect

__all__ = ["MySQLDialect"]


class MySQLDialect(Dialect):
    name = "mysql"
    placeholder = "%s"
    schema_dialect = SchemaDialect(
        global_position="BIGINT AUTO_INCREMENT PRIMARY KEY",
        key_text="VARCHAR(255)",
        text="VARCHAR(255)",
        bigint="BIGINT",
        int="INT",
        uuid="BINARY(16)",
        payload="BLOB",
        metadata="JSON",
        timestamp="TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        updated_timestamp=(
            "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"
        ),
        table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
        inline_indexes=True,
        partial_indexes=False,
        add_column_if_not_exists=False,
    )

    @staticmethod
    def quote(identifier: str) -> str:
        return f"`{identifier}`"
