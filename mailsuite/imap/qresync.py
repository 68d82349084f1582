"""QRESYNC (RFC 7162 section 3.2): a client resynchronizes a mailbox it has cached in one
round trip.

``ENABLE QRESYNC`` (CONDSTORE with it) turns it on; from then on expunges are told as
``* VANISHED uids`` (``ImapMailboxView.qresync``), a new SELECT tells ``[CLOSED]`` for the
mailbox it leaves, ``SELECT/EXAMINE mailbox (QRESYNC (uidvalidity modseq [known-uids
[seq-match]]))`` answers ``* VANISHED (EARLIER)`` with what was expunged since ``modseq`` and a
FETCH (UID FLAGS MODSEQ) of each message changed since, and ``UID FETCH ... (CHANGEDSINCE n
VANISHED)`` reports what vanished too. The expunged UIDs come from the store
(``store.modseq.Vanished``, bounded): when ``modseq`` is older than what it remembers, every UID
below UIDNEXT that is not present is reported (the known-uids the client gives keep that small).
The parsing of the parameters and of the FETCH modifier is ``condstore.CondstoreCommands``'s.
"""

from __future__ import annotations

from bisect import bisect_right

from typing import TYPE_CHECKING, Any

from mailsuite.imap.encode import format_flags, spans_set
from mailsuite.imap.parser import ParseError, Range, parse_sequence_set
from mailsuite.imap.viewmodseq import modseq_value

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

Span = tuple[int, int]
_ALL: list[Range] = [(1, None)]


def _merged(spans: list[Span]) -> list[Span]:
    """Sorted, overlapping and adjacent spans joined."""
    merged: list[Span] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def intersect(spans: list[Span], ranges: list[Range]) -> list[Span]:
    """The UID spans (ascending, disjoint) that fall in a sequence set (``None``: no end); one
    sweep over both, so a client's long sets cost their length, not their product."""
    top = 1 << 63  # ``*``: no end (a UID set's * is above every UID it could name)
    ends = [(top if lo is None else lo, top if hi is None else hi) for lo, hi in ranges]
    wanted = _merged([(min(a, b), max(a, b)) for a, b in ends])
    out: list[Span] = []
    i = 0
    for lo, hi in _merged(spans):
        while i < len(wanted) and wanted[i][1] < lo:
            i += 1
        j = i
        while j < len(wanted) and wanted[j][0] <= hi:
            out.append((max(lo, wanted[j][0]), min(hi, wanted[j][1])))
            j += 1
    return _merged(out)


def _within(uid: int, spans: list[Span], starts: list[int]) -> bool:
    """Whether ``uid`` is in the ascending disjoint ``spans`` (``starts``: their lows)."""
    i = bisect_right(starts, uid) - 1
    return i >= 0 and uid <= spans[i][1]


def vanished_spans(view: Any, since: int) -> list[Span]:
    """The UIDs expunged after ``since``, as spans; when the store has forgotten that far back,
    every UID below UIDNEXT that is not in the view (one pass, only then)."""
    gone = view.mailbox.vanished.since(since)
    if gone is not None:
        spans: list[Span] = []
        for uid in gone:
            if spans and spans[-1][1] + 1 == uid:
                spans[-1] = (spans[-1][0], uid)
            else:
                spans.append((uid, uid))
        return spans
    spans, prev = [], 0
    for uid in view.uids():
        if uid > prev + 1:
            spans.append((prev + 1, uid - 1))
        prev = uid
    if view.uid_next - 1 > prev:
        spans.append((prev + 1, view.uid_next - 1))
    return spans


def vanished_earlier(view: Any, since: int, ranges: list[Range]) -> list[bytes]:
    """``VANISHED (EARLIER) set`` of what went after ``since`` within ``ranges``, if any."""
    spans = intersect(vanished_spans(view, since), ranges)
    return [b"VANISHED (EARLIER) " + spans_set(spans)] if spans else []


def parse_qresync(arg: Any) -> tuple[int, int, list[Range]]:
    """``(uidvalidity modseq [known-uids] [(seqs uids)])`` -> (uidvalidity, modseq, known)."""
    if isinstance(arg, list) and len(arg) == 3 and isinstance(arg[2], list):
        arg = [*arg[:2], b"1:*", arg[2]]  # seq-match without known-uids (RFC 7162 7 grammar)
    if not isinstance(arg, list) or not 2 <= len(arg) <= 4 or any(
            isinstance(a, list) for a in arg[:3]):
        raise ParseError("QRESYNC needs (uidvalidity modseq [known-uids [seq-match]])")
    words = [bytes(a) for a in arg[:3]]
    if not words[0].isdigit() or not 0 < int(words[0]) < 1 << 32:
        raise ParseError("invalid UIDVALIDITY")
    try:
        known = parse_sequence_set(words[2]) if len(words) > 2 else _ALL
        if len(arg) == 4:
            match = arg[3]
            if not isinstance(match, list) or len(match) != 2:
                raise ValueError("seq-match")
            for part in match:
                parse_sequence_set(bytes(part))
    except (ValueError, TypeError):
        raise ParseError("invalid QRESYNC known UIDs") from None
    return int(words[0]), modseq_value(words[1], zero=False), known


def resync_lines(view: Any, validity: int, since: int,
                 known: list[Range]) -> list[bytes]:
    """What SELECT (QRESYNC ...) tells after the usual responses (RFC 7162 3.2.5): nothing
    when UIDVALIDITY changed, else what vanished and a FETCH of each message changed since."""
    if validity != view.uid_validity:
        return []
    lines = vanished_earlier(view, since, known)
    wanted = intersect([(1, 1 << 63)], known)
    starts = [a for a, _ in wanted]
    for seq, uid in _changed(view, since):
        if _within(uid, wanted, starts):
            lines.append(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (
                seq, uid, format_flags(view.flags(uid)), view.info(uid).modseq))
    return lines


def _changed(view: Any, since: int) -> list[tuple[int, int]]:
    """(seq, UID) of the messages changed after ``since``: from the store's log of changes
    (no pass over a big mailbox), else from every message."""
    uids = view.mailbox.changed_since(since)
    if uids is None:
        return [(seq, row.uid) for seq, row in enumerate(view.rows(), 1) if row.modseq > since]
    uids = sorted(set(uids).union(view.new_since(since)))
    found = view.resolve([(u, u) for u in uids], True) if uids else []
    return [(seq, uid) for seq, uid in found if view.info(uid).modseq > since]


class QresyncCommands(_Base):
    """For ``IMAPServer``: the capability and ENABLE QRESYNC (the rest: see the docstring)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"QRESYNC": None}

    def enable_QRESYNC(self) -> bool:  # ENABLE's hook (general.py); CONDSTORE comes with it
        self.enabled.add(b"CONDSTORE")
        view = self.view
        if view is not None:
            if not view.condstore:  # CONDSTORE-enabling in the selected state (RFC 7162 3.1)
                self.sendUntaggedResponse(
                    b"OK [HIGHESTMODSEQ %d] Highest" % view.mailbox.highest_modseq)
            view.condstore = view.qresync = True
        return True
