"""What DB-API MySQL drivers differ in: row types and how they tell whether a
transaction is open."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pupsourcing.adapters.mysql._dialect import (
    _SERVER_STATUS_IN_TRANS,
    CHARSET,
    ConnectionCharsetError,
)
from pupsourcing.store.plan import Row

_SERVER_STATUS_NO_BACKSLASH_ESCAPES = 512
_VAR_STRING = 253  # the field type of VARCHAR results


def check_text_settings(tx: Any) -> None:
    """Raise :class:`ConnectionCharsetError` if the driver says, without a
    round trip, that ``tx`` does not exchange text as utf8mb4 ``str``: its
    character set (PyMySQL, mysqlclient and asyncmy all have
    ``character_set_name()``), or ``use_unicode=False`` (PyMySQL's
    ``use_unicode``, asyncmy's ``_use_unicode``, mysqlclient's converter
    returning bytes for VARCHAR)."""
    name = getattr(tx, "character_set_name", None)
    charset = name() if callable(name) else CHARSET
    if charset != CHARSET:
        raise ConnectionCharsetError("charset", charset)
    use_unicode = getattr(tx, "use_unicode", getattr(tx, "_use_unicode", None))
    if use_unicode is None:
        converter = getattr(tx, "converter", None)
        use_unicode = not (isinstance(converter, dict) and converter.get(_VAR_STRING) is bytes)
    if use_unicode is False:
        raise ConnectionCharsetError("use_unicode", False)


def tuple_rows(rows: list[Any]) -> list[Row]:
    """Rows as tuples, also from a connection whose default cursor returns dicts."""
    if rows and isinstance(rows[0], dict):
        return [tuple(row.values()) for row in rows]
    return rows


def known_transaction_state(tx: Any) -> bool | None:
    """Whether a MySQL connection has a transaction open, as far as the driver
    tells without a round trip (PyMySQL, asyncmy and aiomysql report the
    server status, mysql-connector a flag); ``None`` when it cannot tell."""
    get_autocommit = getattr(tx, "get_autocommit", None)
    autocommit = get_autocommit() if callable(get_autocommit) else tx.autocommit
    if not autocommit:
        return True  # the next statement opens a transaction implicitly
    status = getattr(tx, "server_status", None)
    if isinstance(status, int):
        return bool(status & _SERVER_STATUS_IN_TRANS)
    in_transaction = getattr(tx, "in_transaction", None)
    if isinstance(in_transaction, bool):
        return in_transaction
    return None


def _literal(tx: Any, value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"_binary X'{value.hex()}'"
    return str(tx.literal(value))


def sql_with_params(tx: Any, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> str | None:
    """``sql`` with ``params`` written in, for an asyncmy connection in
    ``NO_BACKSLASH_ESCAPES`` mode; ``None`` in any other mode (the driver's
    own formatting is right). asyncmy escapes ``bytes`` with backslashes
    whatever the mode, which the server then takes literally: a newline
    stored as ``\\n``, a quote ending the literal early. Binary values go
    as hex instead, as PyMySQL sends them in that mode."""
    status = getattr(tx, "server_status", 0)
    if not (isinstance(status, int) and status & _SERVER_STATUS_NO_BACKSLASH_ESCAPES):
        return None
    if isinstance(params, Mapping):
        return sql % {name: _literal(tx, value) for name, value in params.items()}
    return sql % tuple(_literal(tx, value) for value in params)
