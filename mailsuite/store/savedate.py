"""Save dates (RFC 8514 SAVEDATE): when each message was saved into the mailbox it is in.

An index entry keeps it as ``saved`` (epoch seconds; 0: unknown). It is the time of the write
that put the message there: a delivery, APPEND / MULTIAPPEND, COPY and MOVE (an append to the
target), RENAME of INBOX (its messages go to a new mailbox); flag changes, expunge compactions
and rewrites by other programs keep it. Unknown (FETCH SAVEDATE NIL) for what the server did
not write itself: the messages of an mbox it indexes for the first time, those another program
appends or puts in when it rewrites the file, and those of an index older than version 4.

A delivery to a mailbox no session has open does not load its index (``MboxFile.append_many``
with no state): it notes the save dates of what it appended, by the offset of each From line
and the message's fingerprint, as a journal record ``D <offset> <fingerprint> <saved> ...`` of
the saved index (``note_unindexed``). The next load holds them as ``Index.pending`` and
``index.extend`` gives them to the messages it finds at those offsets of the grown file; a file
rewritten meanwhile is reconciled without them.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from twisted.logger import Logger

from mailsuite.store import index as ix
from mailsuite.store.mboxformat import describe
from mailsuite.store.mboxstate import INDEX_NAME
from mailsuite.store.zones import local_offset, zone

log = Logger()
_HEAD_MAX = 4096  # the magic and head lines of an index fit in it


def record(saved: list[tuple[int, str, int]]) -> bytes:
    """The journal record of messages appended at these (From line offset, fingerprint, save
    time)."""
    return b"D" + b"".join(b" %d %s %d" % (o, f.encode(), t) for o, f, t in saved) + b"\n"


def generation(head: bytes) -> int | None:
    """The generation of the index whose first bytes are ``head``; None if it is not one."""
    lines = head.split(b"\n", 2)
    if len(lines) < 3 or not lines[0].startswith(b"mailsuite-mbox-index "):
        return None
    words = lines[1].split()  # (version 1 and 2: no highest modseq; older: no generation)
    if len(words) < 6 or not words[-1].isdigit():
        return None
    return int(words[-1])


def note_unindexed(keeper: Any, spans: list[tuple[int, int, int, bytes]],
                   each: list[tuple[Any, int, Any]], now: int) -> None:
    """Journal that the messages ``MboxFile.append_many`` just wrote (``spans``: file offset,
    From line and body start in the blob, the blob; ``each``: flags, date, zone) were saved
    ``now``, for the index of ``keeper`` (an ``mboxstate.IndexKeeper``), without loading it:
    the journal of the saved index, or one of generation 0 when there is none yet (read by
    ``first_index``). Nothing when the index has no home (kept in memory). Never fails: the
    mail is delivered already (a failed delivery would be sent again), only its save date is
    then unknown."""
    try:
        parsed = [describe(blob, start, body, len(blob) - 1, when, base=base)
                  for (base, start, body, blob), (_, when, _) in zip(spans, each, strict=True)]
        d = keeper._index_dir(create=True)  # (made now, as by the first open)
        if d is None:
            return
        with d:
            found = _generation_at(d.fd)
            if found is not None:
                ix.append_log(INDEX_NAME, ix.Index(0, generation=found),
                              record([(p.offset, p.fingerprint, now) for p in parsed]),
                              keeper._owner(), d.fd)
    except Exception as e:  # (also a bug: the mail is on disk, only its save date is lost)
        log.warn("{path}: save dates of delivered mail not kept: {why}", path=keeper.path, why=e)


def _generation_at(dir_fd: int) -> int | None:
    """The generation of the index in ``dir_fd``: 0 when there is none, None when it has no
    generation (or is not an index)."""
    try:
        fd = os.open(INDEX_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    try:
        return generation(os.pread(fd, _HEAD_MAX, 0))
    finally:
        os.close(fd)


def first_index(keeper: Any, validity: int) -> ix.Index:
    """A new index for a mailbox that has none, with the save dates ``note_unindexed`` kept
    for the messages delivered before it (its journal of generation 0)."""
    new = ix.Index(uid_validity=validity)
    d = keeper._index_dir(create=False)
    if d is None:
        return new
    with d:
        try:
            fd = os.open(ix.log_path(INDEX_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=d.fd)
        except OSError:
            return new
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    try:
        return ix.apply_log(new, data)
    except ix.CorruptIndex:
        return new


def fresh(entries: list[ix.Entry], now: int) -> list[ix.Entry]:
    """``entries`` saved at ``now`` (moved into a new mailbox)."""
    return [e._replace(saved=now) for e in entries]


def saved_date(info: Any) -> datetime | None:
    """The save date of a message's info (an index ``Entry`` or a ``MessageInfo``) in the
    server's zone at that time; None when unknown."""
    saved = getattr(info, "saved", 0)
    if not saved:
        return None
    return datetime.fromtimestamp(saved, zone(local_offset(saved)))
