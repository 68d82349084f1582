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
    partials = [parse_partial(o[8:]) for o in options if o.startswith(b"PARTIAL ")]
    if len(partials) + (b"ALL" in options) > 1:  # RFC 5267 4.4: one PARTIAL or ALL at most
        raise ParseError("One PARTIAL or ALL at most")
    partial = partials[0] if partials else None
    return partial
