"""The web console behind ``pupsourcing ui``: a read-only view of a store
for people (store head, projections and their partitions, streams, the
global log, dead letters) and a small JSON API beside it.

Needs the ``ui`` extra (Starlette and uvicorn)::

    pip install 'pupsourcing[ui]'
    pupsourcing ui --db postgresql://.../shop

:func:`create_app` returns the ASGI application, to mount it in another
server; it opens only read-only transactions and has no write endpoint.
"""

from pupsourcing._extras import needs_extra

with needs_extra("ui", "pupsourcing.console"):
    from pupsourcing.console._app import create_app

__all__ = ["create_app"]
