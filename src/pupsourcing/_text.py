"""Words for people: counts with the right noun form."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 event"``, ``"0 events"``, ``"1204 events"``; ``plural_form``
    for nouns that do not just take an ``s`` (``plural(2, "class", "classes")``)."""
    noun = singular if count == 1 else plural_form or f"{singular}s"
    return f"{count} {noun}"
