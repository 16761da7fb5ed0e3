"""One package per database, each with its dialect and its blocking and
asyncio stores. None imports its driver until a connection is used:

- :mod:`pupsourcing.adapters.sqlite` — :class:`SQLiteStore` (standard library)
- :mod:`pupsourcing.adapters.postgres` — :class:`PostgresStore` (psycopg 3)
- :mod:`pupsourcing.adapters.mysql` — :class:`MySQLStore` (PyMySQL or any DB-API MySQL driver)

The list of adapters, which URLs, migrations and the command line read, is
``pupsourcing.adapters._registry``.
"""
