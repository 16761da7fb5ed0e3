"""One store per database. Each module imports its driver only when used:

- :mod:`pupsourcing.adapters.sqlite` — :class:`SQLiteStore` (standard library)
- :mod:`pupsourcing.adapters.postgres` — :class:`PostgresStore` (psycopg 3)
- :mod:`pupsourcing.adapters.mysql` — :class:`MySQLStore` (PyMySQL or any DB-API MySQL driver)
"""
