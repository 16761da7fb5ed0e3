"""The HTML pages: a small shell each; ``console.js`` fills it from the
JSON API (as text, never as markup).

Every URL in them starts with ``root``, the path the console is served
under (``""`` at the root of a server, already percent-encoded); the
script reads it from the page (``data-root``)."""

from __future__ import annotations

from html import escape

_NAV = (
    ("/", "Overview", "overview"),
    ("/streams", "Streams", "streams"),
    ("/log", "Global log", "log"),
    ("/dead-letters", "Dead letters", "dead-letters"),
)

_CURRENT = ' aria-current="page"'


def page(
    title: str, view: str, body: str = "", *, root: str = "", signed_in: bool = False, **data: str
) -> str:
    """A console page: the navigation, ``body`` (trusted markup) and the
    ``data-*`` attributes ``console.js`` reads (escaped here); with
    ``signed_in`` (by the login cookie), a sign-out button."""
    data = {"root": root, **data}
    attrs = "".join(f' data-{escape(k.replace("_", "-"))}="{escape(v)}"' for k, v in data.items())
    current = "streams" if view == "stream" else view
    links = "".join(
        f'<li><a href="{escape(root + href)}"{_CURRENT if key == current else ""}>{label}</a></li>'
        for href, label, key in _NAV
    )
    sign_out = (
        f'<form method="post" action="{escape(root)}/logout" class="sign-out">'
        '<button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · pupsourcing</title>
<link rel="stylesheet" href="{escape(root)}/static/console.css">
<script src="{escape(root)}/static/console.js" defer></script>
</head>
<body data-view="{escape(view)}"{attrs}>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">pupsourcing</span>
<nav aria-label="Console"><ul>{links}</ul></nav>{sign_out}</header>
<main id="main" tabindex="-1">
<h1>{escape(title)}</h1>
{body}
<p id="status" class="status" role="status" aria-live="polite"></p>
<div id="content"></div>
</main>
</body>
</html>
"""


def login(error: str | None = None, next_path: str = "/", root: str = "") -> str:
    """The sign-in form; ``next_path`` (below ``root``) is where it leads."""
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · pupsourcing</title>
<link rel="stylesheet" href="{escape(root)}/static/console.css">
</head>
<body>
<main id="main" class="login">
<h1>pupsourcing console</h1>
{message}
<form method="post" action="{escape(root)}/login">
<input type="hidden" name="next" value="{escape(next_path)}">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""


STREAM_SEARCH = """<form id="search" class="search" role="search">
<div class="field"><label for="q">Aggregate id or prefix</label>
<input id="q" name="q" required></div>
<div class="field"><label for="bc">Bounded context (optional)</label>
<input id="bc" name="bounded_context"></div>
<div class="field"><label for="type">Aggregate type (optional)</label>
<input id="type" name="aggregate_type"></div>
<button type="submit">Search</button>
</form>"""

STREAM_RANGE = """<form id="range" class="search">
<div class="field"><label for="from">From version</label>
<input id="from" name="from_version" inputmode="numeric" pattern="[0-9]*"></div>
<div class="field"><label for="to">To version</label>
<input id="to" name="to_version" inputmode="numeric" pattern="[0-9]*"></div>
<button type="submit">Show</button>
</form>"""
