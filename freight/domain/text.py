"""Text a store can keep as it is."""

from __future__ import annotations


def storable(text: str) -> bool:
    """Whether a store can keep this text as it is: no NUL character (PostgreSQL's text cannot hold one)
    and valid UTF-8 (no lone surrogate)."""
    if "\0" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
