"""Where the console is served: the path it is mounted at (``""`` at the
root of a server), and a request's path below it.

Mounted under another application (Starlette's ``Mount("/console", ...)``)
or served with a root path (``uvicorn --root-path /console`` behind a
proxy), the ASGI ``path`` holds that prefix and ``root_path`` names it.
Inside the console ``root_path`` grows again (the API is a mount of its
own), so :class:`~pupsourcing.console._security.Guard`, the outermost
layer, keeps the console's own in the scope under :data:`ROOT`.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.types import Scope

ROOT = "pupsourcing.console.root_path"


def below(path: str, root: str) -> str:
    """``path`` without ``root`` in front (``path`` itself when ``root``
    is not a whole-segment prefix of it)."""
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def root_path(scope: Scope) -> str:
    """The path the console is served under, decoded, without a trailing ``/``."""
    root: str = scope[ROOT] if ROOT in scope else scope.get("root_path", "")
    return root.rstrip("/")


def route_path(scope: Scope) -> str:
    """The request's path below the console's root path, decoded."""
    return below(scope["path"], root_path(scope))


def url_root(scope: Scope) -> str:
    """:func:`root_path` as it goes in front of the console's URLs
    (percent-encoded; ``""`` at the root of the server)."""
    return quote(root_path(scope), safe="/!$&'()*+,;=:@")
