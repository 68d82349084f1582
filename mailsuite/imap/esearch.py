"""RETURN options of SEARCH and SORT (ESEARCH, RFC 4731; ESORT, RFC 5267) and the ESEARCH
response.

``parse_return`` reads ``RETURN (MIN MAX ALL COUNT)`` off the front of the arguments;
``esearch_response`` formats ``* ESEARCH (TAG "a") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9``. For
SEARCH, ALL is a sequence-set of the numbers ascending; for SORT, in the sort order (RFC 5267
section 3.1), so only runs that ascend by one are joined.
"""

from __future__ import annotations

import re

from mailsuite.imap.parser import ParseError

OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT")
_RETURN = re.compile(rb"RETURN[ ]\(([A-Za-z ]*)\)[ ]?", re.I)


def parse_return(text: bytes) -> tuple[list[bytes] | None, bytes]:
    """(the options, or None when there is no RETURN; the rest of the arguments). ``RETURN
    ()`` means ALL (RFC 4731 section 3.1); an unknown option is BAD."""
    m = _RETURN.match(text)
    if not m:
        if text[:7].upper() == b"RETURN ":
            raise ParseError("Invalid RETURN options")
        return None, text
    options: list[bytes] = []
    for word in m.group(1).upper().split():
        if word not in OPTIONS:
            raise ParseError("Unknown RETURN option " + word.decode("ascii", "replace"))
        if word not in options:
            options.append(word)
    return options or [b"ALL"], text[m.end():]


def sequence_set(numbers: list[int]) -> bytes:
    """``[1, 2, 3, 7, 5]`` -> ``1:3,7,5`` (the order kept)."""
    out: list[bytes] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def esearch_response(tag: bytes, uid: bool, options: list[bytes], found: list[int],
                     ordered: bool = False) -> bytes:
    """The ESEARCH response (untagged, without ``* ``). ``ordered``: ``found`` is in a sort
    order that ALL keeps."""
    parts = [b"ESEARCH (TAG \"" + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b"\")"]
    if uid:
        parts.append(b"UID")
    if found:
        if b"MIN" in options:
            parts.append(b"MIN %d" % min(found))
        if b"MAX" in options:
            parts.append(b"MAX %d" % max(found))
    if b"COUNT" in options:
        parts.append(b"COUNT %d" % len(found))
    if b"ALL" in options and found:
        parts.append(b"ALL " + sequence_set(found if ordered else sorted(found)))
    return b" ".join(parts)
