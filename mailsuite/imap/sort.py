"""SORT (RFC 5256) with SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267 RETURN options), THREAD
(RFC 5256: ORDEREDSUBJECT, REFERENCES; REFS), and their UID forms.

The search criteria are SEARCH's (``search.run_search``); the keys come from
``sortkeys.records`` (the header fields read once per message and kept for the view). Keys
compare with i;unicode-casemap (``collation``); ties keep the mailbox order (RFC 5256 section
3: sequence numbers ascending, also under REVERSE).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailsuite.imap import within
from mailsuite.imap.esearch import bind_saved, esearch_response, parse_return, save, to_save
from mailsuite.imap.parser import Cursor, ParseError
from mailsuite.imap.search import SearchSyntaxError, parse_search, run_search
from mailsuite.imap.selected import uid_command
from mailsuite.imap.session import states
from mailsuite.imap.sortkeys import (
    ALL_KEYS,
    CC,
    DATE,
    FROM,
    SUBJECT,
    THREAD_KEYS,
    TO,
    SortRecord,
    off_reactor,
    records,
    view_keys,
)
from mailsuite.imap.thread import ALGORITHMS, Found
from mailsuite.store.mboxmailbox import quiet_gc

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

_KEYS: dict[bytes, Any] = {  # of a (sequence number, record) pair: one call per message
    b"ARRIVAL": lambda f: f[1].arrival,
    b"CC": lambda f: f[1].cc,
    b"DATE": lambda f: f[1].date,
    b"FROM": lambda f: f[1].from_,
    b"SIZE": lambda f: f[1].size,
    b"SUBJECT": lambda f: f[1].subject,
    b"TO": lambda f: f[1].to,
    b"DISPLAYFROM": lambda f: f[1].display_from,
    b"DISPLAYTO": lambda f: f[1].display_to,
}
_GROUPS = {b"ARRIVAL": 0, b"CC": CC, b"DATE": DATE, b"FROM": FROM, b"SIZE": 0,
           b"SUBJECT": SUBJECT, b"TO": TO, b"DISPLAYFROM": FROM, b"DISPLAYTO": TO}
#: the record groups each THREAD algorithm uses (REFERENCES and REFS no address)
_THREAD_GROUPS = {b"ORDEREDSUBJECT": DATE | SUBJECT, b"REFERENCES": THREAD_KEYS,
                  b"REFS": THREAD_KEYS}


def key_groups(keys: list[tuple[bytes, bool]]) -> int:
    """The record groups (``sortkeys``) the sort keys compare."""
    return sum(set(_GROUPS[name] for name, _ in keys))
_CHARSETS = (b"UTF-8", b"US-ASCII")
assert within  # imported for its search keys
_ALL = ("AND", [("ALL",)])
_PROGRAM = re.compile(rb"\(([A-Za-z ]+)\)[ ]+([^ ]+)[ ]+(.+)", re.S)


def parse_sort_keys(text: bytes) -> list[tuple[bytes, bool]]:
    """``REVERSE DATE SUBJECT`` -> ``[(b"DATE", True), (b"SUBJECT", False)]``."""
    keys: list[tuple[bytes, bool]] = []
    reverse = False
    for word in text.upper().split():
        if word == b"REVERSE" and not reverse:
            reverse = True
            continue
        if word not in _KEYS:
            raise ParseError("Unknown sort key " + word.decode("ascii", "replace"))
        keys.append((word, reverse))
        reverse = False
    if reverse or not keys:
        raise ParseError("Invalid sort criteria")
    return keys


def sort_records(found: Found,
                 keys: list[tuple[bytes, bool]]) -> list[tuple[int, SortRecord]]:
    """Sorted by the keys, the first the most significant: one stable pass per key from the
    last, so equal messages keep sequence order (Python's ``reverse`` is stable too). No
    collection meanwhile: the pairs of a ``sortkeys.Numbered`` are made here, 100,000 of them
    (each full collection walks every record again: 60 ms more per SORT)."""
    with quiet_gc():
        out = list(found)
        for name, reverse in reversed(keys):
            out.sort(key=_KEYS[name], reverse=reverse)
    return out


def _sorted(found: Found, keys: list[tuple[bytes, bool]],
            uid: bool) -> list[int]:
    return [rec.uid if uid else seq for seq, rec in sort_records(found, keys)]


def _charset(word: bytes) -> bytes:
    if word.startswith(b'"') and word.endswith(b'"') and len(word) >= 2:
        word = word[1:-1]
    return word.upper()


class SortCommands(_Base):
    """SORT and THREAD, for ``IMAPServer``."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return dict.fromkeys((b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT",
                              b"THREAD=REFERENCES", b"THREAD=REFS", b"ESEARCH", b"ESORT",
                              b"SEARCHRES", b"WITHIN"))

    async def _found(self, tag: bytes, charset: bytes, criteria: bytes,
                     groups: int = ALL_KEYS) -> Found | None:
        """The records of the messages the criteria find, the key groups ``groups`` made;
        None after a NO (charset)."""
        view = self.view
        assert view is not None
        if _charset(charset) not in _CHARSETS:
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return None
        try:
            _, key = parse_search(criteria)
        except SearchSyntaxError as e:
            raise ParseError(str(e)) from None
        if key == _ALL:
            return await records(view, groups)
        wanted = set(await run_search(view, bind_saved(key, view), True))
        found = await records(view, groups)
        with quiet_gc():  # (new pairs: see sort_records)
            return [(seq, rec) for seq, rec in found if rec.uid in wanted]

    async def _cached(self, found: Found, request: Any,
                      f: Any, *args: Any) -> Any:
        """``f(*args)`` (off the reactor when big); for the whole mailbox, kept for the
        mailbox's messages as this view shows them (``sortkeys.ViewKeys``)."""
        assert self.view is not None
        keys = view_keys(self.view)
        whole = found is keys.found
        if whole:
            kept = keys.result(request)
            if kept is not None:
                return kept
        result = await off_reactor(len(found), f, *args)
        if whole and found is keys.found:
            keys.keep(request, result)
        return result

    @states("select")
    async def cmd_SORT(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        args.sp()
        options, rest = parse_return(args.rest())
        self.check_update_tag(tag, options)  # CONTEXT (context.py)
        saving = options is not None and b"SAVE" in options
        m = _PROGRAM.fullmatch(rest)
        if not m:
            if saving:
                save(self.view, [])  # RFC 5182 2.1: a failed SAVE empties the result
            raise ParseError("SORT needs (sort criteria) charset search criteria")
        found = None
        try:  # "$" in the criteria is the result saved before; a failure empties it
            keys = parse_sort_keys(m.group(1))
            found = await self._found(tag, m.group(2), m.group(3), key_groups(keys))
        finally:
            if saving and found is None:
                save(self.view, [])
        if found is None:
            return
        bound = bind_saved(parse_search(m.group(3))[1], self.view)  # before SAVE: CONTEXT
        numbers = await self._cached(found, (b"SORT", uid, tuple(keys)), _sorted, found, keys,
                                     uid)
        if options is None:  # RFC 7162 3.1.9: "(MODSEQ n)" when the criteria used MODSEQ
            self.sendUntaggedResponse(b"SORT" + b"".join(b" %d" % n for n in numbers)
                                      + self.search_result(bound, numbers, uid))
            self.sendPositiveResponse(tag, self._command + b" completed.")
            return
        if saving:
            by_seq = {seq: rec.uid for seq, rec in found}
            save(self.view, to_save(options, numbers if uid else [by_seq[n] for n in numbers],
                                    True))
        if options != [b"SAVE"]:  # CONTEXT=SORT's UPDATE and PARTIAL: context.py
            extra = self.search_context(tag, uid, options, bound, numbers,
                                        (keys, sort_records, {}))
            self.sendUntaggedResponse(esearch_response(tag, uid, options, numbers, True)
                                      + self._esearch_modseq(bound, options, numbers, uid)
                                      + extra)
        self.sendPositiveResponse(tag, self._command + b" completed.")

    @states("select")
    async def cmd_THREAD(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        args.sp()
        algorithm = args.atom().upper()
        args.sp()
        rest = args.rest()
        charset, _, criteria = rest.partition(b" ")
        if algorithm not in ALGORITHMS:
            raise ParseError("Unknown threading algorithm")
        if not criteria.strip():
            raise ParseError("THREAD needs an algorithm, a charset and search criteria")
        found = await self._found(tag, charset, criteria,
                                  _THREAD_GROUPS.get(algorithm, ALL_KEYS))
        if found is None:
            return
        number = (lambda seq, rec: rec.uid) if uid else (lambda seq, rec: seq)
        threads = await self._cached(found, (b"THREAD", uid, algorithm), ALGORITHMS[algorithm],
                                     found, number)
        self.sendUntaggedResponse(b"THREAD" + (b" " + threads if threads else b""))
        self.sendPositiveResponse(tag, self._command + b" completed.")

    uid_command(cmd_SORT)
    uid_command(cmd_THREAD)
