"""The i;unicode-casemap collation (RFC 5051), used by SORT and THREAD and by SEARCH's string
matching.

A string is compared by its *key*: each character mapped to its simple titlecase (UnicodeData
field 14; a character whose titlecase takes more than one character, as Python's full mapping
may, keeps its simple uppercase or itself), then the whole decomposed to NFKD. Keys compare by
code point, which is the octet order of their UTF-8 (RFC 5051 section 2). Substring matching
(SEARCH) asks whether the needle's key is in the haystack's key.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["NAME", "casemap", "contains"]

NAME = "i;unicode-casemap"


@lru_cache(maxsize=4096)
def _title(char: str) -> str:
    """The simple titlecase mapping of one character."""
    mapped = char.title()
    if len(mapped) == 1:
        return mapped
    upper = char.upper()
    return upper if len(upper) == 1 else char


def casemap(text: str | bytes) -> str:
    """The i;unicode-casemap key of ``text`` (bytes are UTF-8; an invalid octet becomes
    U+FFFD, so a broken string still has a key)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.isascii():
        return text.upper()  # ASCII: titlecase is uppercase, NFKD changes nothing
    return unicodedata.normalize("NFKD", "".join(map(_title, text)))


def contains(haystack: str | bytes, needle: str | bytes) -> bool:
    """SEARCH's substring match under the collation."""
    return casemap(needle) in casemap(haystack)
