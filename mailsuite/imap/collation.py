"""The i;unicode-casemap collation (RFC 5051), used by SORT and THREAD and by SEARCH's string
matching.

A string is compared by its *key*, made character by character from the Unicode Character
Database as RFC 5051 section 2 says: the simple titlecase mapping (UnicodeData field 14) if
there is one, then the decomposition mapping (field 5, canonical or compatibility) if there is
one, each character of the result done again, until nothing changes (so U+FB01 "fi" becomes
"FI"; Hangul syllables, whose decomposition is algorithmic and not in UnicodeData, stay). Keys
compare by code point, the octet order of their UTF-8. SEARCH asks whether the needle's key is
in the haystack's key.
"""

from __future__ import annotations

import unicodedata

__all__ = ["NAME", "casemap", "contains"]

NAME = "i;unicode-casemap"

_MAPPED: dict[str, str] = {}


def _title(char: str) -> str:
    """The simple titlecase mapping of one character (Python's ``title`` is the full one,
    from SpecialCasing: a result longer than one character is not the simple mapping)."""
    mapped = char.title()
    return mapped if len(mapped) == 1 else char


def _map(char: str, depth: int = 0) -> str:
    found = _MAPPED.get(char)
    if found is not None:
        return found
    title = _title(char)
    decomposition = unicodedata.decomposition(title).split()
    if decomposition and decomposition[0].startswith("<"):
        decomposition = decomposition[1:]  # <compat>, <font>...: compatibility, used too
    if decomposition and depth < 16:  # UnicodeData decompositions are a few levels deep
        out = "".join(_map(chr(int(code, 16)), depth + 1) for code in decomposition)
    else:
        out = title
    _MAPPED[char] = out
    return out


class _Table(dict[int, str]):
    """Code point -> key, filled as characters are met (``str.translate`` looks up in C)."""

    def __missing__(self, code: int) -> str:
        out = self[code] = _map(chr(code))
        return out


_TABLE = _Table()


def casemap(text: str | bytes) -> str:
    """The i;unicode-casemap key of ``text`` (bytes are UTF-8; an invalid octet becomes
    U+FFFD, so a broken string still has a key)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.isascii():
        return text.upper()  # ASCII: titlecase is uppercase, and nothing decomposes
    return text.translate(_TABLE)


def contains(haystack: str | bytes, needle: str | bytes) -> bool:
    """SEARCH's substring match under the collation."""
    return casemap(needle) in casemap(haystack)
