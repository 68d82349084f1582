"""RETURN options of SEARCH and SORT (ESEARCH, RFC 4731; ESORT, RFC 5267), the ESEARCH
response, and the saved search result (SEARCHRES, RFC 5182: ``RETURN (SAVE)`` and ``$``).

``parse_return`` reads ``RETURN (...)`` off the front of the arguments (MIN MAX ALL COUNT, SAVE,
and CONTEXT=SEARCH's UPDATE, CONTEXT and PARTIAL, checked by ``contextopts``);
``esearch_response`` formats ``* ESEARCH (TAG "a") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9``. For
SEARCH, ALL is a sequence-set of the numbers ascending; for SORT, in the sort order (RFC 5267
section 3.1), so only runs that ascend by one are joined.

The saved result is a set of UIDs kept on the view (``saved_search``: a new SELECT starts
with none; a session with one does not hibernate, whose snapshot has no room for it), so expunged
messages drop out of it by themselves; ``$`` as a sequence set is ``parser.SAVED`` (resolved by
``saved_targets``), as a search key ``("$", None)`` (bound by ``bind_saved``).
"""

from __future__ import annotations

import re
from typing import Any

from mailsuite.imap.contextopts import check_options
from mailsuite.imap.parser import MAX_NESTING, ParseError
from mailsuite.imap.encode import number_set
from mailsuite.imap.search import run_search

OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"UPDATE", b"CONTEXT")
_RETURN = re.compile(rb"RETURN[ ]\(([A-Za-z0-9: ]*)\)[ ]?", re.I)  # and PARTIAL: context.py


def parse_return(text: bytes) -> tuple[list[bytes] | None, bytes]:
    """(the options, or None when there is no RETURN; the rest of the arguments). ``RETURN
    ()`` means ALL (RFC 4731 section 3.1); an unknown option is BAD."""
    m = _RETURN.match(text)
    if not m:
        if text[:7].upper() == b"RETURN ":
            raise ParseError("Invalid RETURN options")
        return None, text
    options: list[bytes] = []
    words = iter(m.group(1).upper().split())
    for word in words:
        if word == b"PARTIAL":  # RFC 5267 4.4: "PARTIAL 1:100" kept as one option
            word += b" " + next(words, b"")
        elif word not in OPTIONS:
            raise ParseError("Unknown RETURN option " + word.decode("ascii", "replace"))
        if word not in options:
            options.append(word)
    check_options(options)  # CONTEXT's PARTIAL and UPDATE (contextopts.py)
    return options or [b"ALL"], text[m.end():]


def esearch_response(tag: bytes, uid: bool, options: list[bytes], found: list[int],
                     ordered: bool = False) -> bytes:
    """The ESEARCH response (untagged, without ``* ``). ``ordered``: ``found`` is in a sort
    order, which ALL keeps and MIN and MAX follow (RFC 5267 section 3.2: the lowest and
    the highest *sorted* message, the first and the last of the order)."""
    parts = [b"ESEARCH (TAG \"" + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b"\")"]
    if uid:
        parts.append(b"UID")
    if found:
        if b"MIN" in options:
            parts.append(b"MIN %d" % (found[0] if ordered else min(found)))
        if b"MAX" in options:
            parts.append(b"MAX %d" % (found[-1] if ordered else max(found)))
    if b"COUNT" in options:
        parts.append(b"COUNT %d" % len(found))
    if b"ALL" in options and found:
        parts.append(b"ALL " + number_set(found if ordered else sorted(found)))
    return b" ".join(parts)


def save(view: Any, uids: list[int]) -> None:
    view.saved_search = frozenset(uids)


def saved_targets(view: Any) -> list[tuple[int, int]]:
    """``[(seq, uid)]`` of the saved messages the view still has (``$`` of FETCH, STORE...)."""
    return list(view.resolve([(u, u) for u in sorted(view.saved_search)], True))


def to_save(options: list[bytes], uids: list[int], ordered: bool = False) -> list[int]:
    """What ``RETURN (SAVE ...)`` saves: the minimum and/or maximum alone when those are all
    that is asked besides SAVE, else every message found (RFC 5182 section 2.4); of a sort
    order (``ordered``), its first and last, as MIN and MAX answer."""
    if uids and (b"ALL" not in options and b"COUNT" not in options
                 and (b"MIN" in options or b"MAX" in options)):
        kept = {uids[0] if ordered else min(uids)} if b"MIN" in options else set()
        if b"MAX" in options:
            kept.add(uids[-1] if ordered else max(uids))
        return sorted(kept)
    return uids


def bind_saved(key: tuple[Any, ...], view: Any, depth: int = 0) -> tuple[Any, ...]:
    """The search key with each ``$`` given the view's saved result."""
    if depth > MAX_NESTING + 1:
        return key
    name = key[0]
    if name == "$":
        return ("$", view.saved_search)
    if name == "AND":
        return ("AND", [bind_saved(k, view, depth + 1) for k in key[1]])
    if name == "NOT":
        return ("NOT", bind_saved(key[1], view, depth + 1))
    if name == "OR":
        return ("OR", bind_saved(key[1], view, depth + 1), bind_saved(key[2], view, depth + 1))
    return key


async def run_saving(view: Any, key: tuple[Any, ...], uid: bool,
                     options: list[bytes]) -> list[int]:
    """SEARCH with RETURN options: the numbers found (UIDs when ``uid``), saved first when
    SAVE is among the options (the result is empty meanwhile: a failure leaves it so)."""
    key = bind_saved(key, view)
    if b"SAVE" not in options:
        return await run_search(view, key, uid)
    save(view, [])
    uids = await run_search(view, key, True)
    save(view, to_save(options, uids))
    if uid:
        return uids
    wanted = set(uids)
    return [seq for seq, u in enumerate(view.uids(), 1) if u in wanted]
