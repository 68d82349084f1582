"""The RETURN options of CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4) that
``esearch.parse_return`` checks before the search runs: the range of PARTIAL, and the options
that cannot go together. The rest of the extension is ``context.py``."""

from __future__ import annotations

import re

from mailsuite.imap.parser import ParseError

_RANGE = re.compile(rb"([1-9][0-9]{0,9}):([1-9][0-9]{0,9})")


def parse_partial(word: bytes) -> tuple[int, int]:
    """``23500:24000`` -> (23500, 24000); the numbers in either order (RFC 5267 section 4.4)."""
    m = _RANGE.fullmatch(word)
    if not m or max(int(m.group(1)), int(m.group(2))) > 0xFFFFFFFF:
        raise ParseError("PARTIAL needs a range of positions, as 1:100")
    low, high = sorted((int(m.group(1)), int(m.group(2))))
    return low, high


def check_options(options: list[bytes]) -> tuple[int, int] | None:
    """The PARTIAL range asked for, if any; BAD for options that cannot go together."""
    partial = None
    for option in options:
        if option.startswith(b"PARTIAL "):
            partial = parse_partial(option[8:])
    if partial is not None and b"ALL" in options:
        raise ParseError("PARTIAL and ALL cannot be used together")
    if b"UPDATE" in options and b"SAVE" in options:
        raise ParseError("UPDATE and SAVE cannot be used together")
    return partial
