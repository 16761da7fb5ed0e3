"""MkDocs hook: render the Sphinx roles in docstrings (``:class:`~a.B```) as code.

The docstrings are written for ``help()`` and editors, in reStructuredText
style; mkdocstrings renders them as Markdown, which leaves the role names in
the text. Fully qualified pupsourcing names become links to the API reference
(optional ones: no warning when the target is not documented).
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|func|meth|mod|data|exc|attr|obj):<code>(~?)([^<]+)</code>")


def _render(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    text = target.rsplit(".", 1)[-1] if shorten else target
    if target.startswith("pupsourcing."):
        return f'<autoref identifier="{target}" optional><code>{text}</code></autoref>'
    return f"<code>{text}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(_render, html)
