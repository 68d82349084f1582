"""Save dates (RFC 8514 SAVEDATE): when each message was saved into the mailbox it is in.

An index entry keeps it as ``saved`` (epoch seconds; 0: unknown). It is the time of the write
that put the message there: a delivery, APPEND / MULTIAPPEND, COPY and MOVE (an append to the
target), RENAME of INBOX (its messages go to a new mailbox); flag changes, expunge compactions
and rewrites by other programs keep it. A message the server finds in the file (the first
parse of an mbox, mail appended by a delivery to a mailbox no session had open, or by another
program, a rewrite's new messages: ``index._new_entry``) gets its From line's date, the time it
was written into the mbox (RFC 4155; mailsuite's deliveries and Postfix's local put it there):
a delivery costs no more work for SAVEDATE. Unknown (FETCH SAVEDATE NIL) for a From line
without a date and for the messages of an index older than version 4.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from twisted.logger import Logger

from mailsuite.store import index as ix
from mailsuite.store.zones import local_offset, zone

log = Logger()


def fresh(entries: Iterable[ix.Entry], now: int) -> ix.EntryTable:
    """``entries`` saved at ``now`` (moved into a new mailbox)."""
    return ix.EntryTable(e._replace(saved=now) for e in entries)


def saved_date(info: Any) -> datetime | None:
    """The save date of a message's info (an index ``Entry`` or a ``MessageInfo``) in the
    server's zone at that time; None when unknown."""
    saved = getattr(info, "saved", 0)
    if not saved:
        return None
    return datetime.fromtimestamp(saved, zone(local_offset(saved)))
