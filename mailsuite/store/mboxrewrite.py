"""Writing the kept part of an mbox into a new file (expunge): blocking, run it in a thread.

Most of a big mailbox is copied as it is, in big chunks: only the messages that go and the
messages whose ``Status:``/``X-Status:``/``X-Keywords:`` headers no longer say what their flags
are ("dirty") are touched one by one. The bytes between them (junk before the first message,
the separator lines, the bodies of dirty messages, whole runs of clean messages) are copied
verbatim, and the index entries of copied messages only shift.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from mailsuite.fsutil import WriteBehind, write_all
from mailsuite.store import index as ix
from mailsuite.store.interfaces import StoreError
from mailsuite.store.mboxformat import fingerprint, header_flags, served_header, status_headers
from mailsuite.wire import wire_size

CHUNK = 16 << 20  # bytes per read/write when copying (big: page cache to page cache is cheap)
NO_STATUS = "00000000"  # header_sig of a message without any status header


@functools.lru_cache(maxsize=1024)
def _status_sig(flags: frozenset[str]) -> str:
    return header_flags(status_headers(flags))[1]


def needs_status(e: ix.Entry) -> bool:
    """The message's status headers do not say what its flags are (a message without status
    headers and without flags is fine: mutt reads that as new and unread)."""
    return status_due(e.header_sig, e.flags)


def status_due(header_sig: str, flags: frozenset[str]) -> bool:
    """``needs_status`` of a message of this header signature and these flags."""
    if header_sig == NO_STATUS and not flags:
        return False
    return _status_sig(flags) != header_sig


class _Copier:
    def __init__(self, src: int, out: int, touch: Callable[[], None]) -> None:
        self.src, self.out, self.touch = src, out, touch
        self.pos = 0  # bytes written to out
        self.buf: bytearray | None = None  # made when copy_file_range cannot be used (16 MB)
        self.in_kernel = hasattr(os, "copy_file_range")
        self.since_touch = 0
        self.behind = WriteBehind(out)

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.out, data)
        self.pos += len(data)

    def copy(self, start: int, stop: int) -> None:
        """Copy src[start:stop] to the end of out: in the kernel (``copy_file_range``, no
        trip through user space) when the file system can, else through our buffer."""
        while self.in_kernel and start < stop:
            try:
                n = os.copy_file_range(self.src, self.out, min(CHUNK, stop - start), start)
            except OSError:
                self.in_kernel = False  # not here (EXDEV, EINVAL, ENOSYS ...): read and write
                break
            if n <= 0:
                raise StoreError("mailbox shrank while it was locked")
            self.pos += n
            start += n
            self._touched(n)
        self._copy_buffered(start, stop)

    def _touched(self, n: int) -> None:
        self.behind.wrote(self.pos)
        self.since_touch += n
        if self.since_touch > 64 << 20:
            self.touch()  # keep our dotlock from looking stale
            self.since_touch = 0

    def _copy_buffered(self, start: int, stop: int) -> None:
        if start >= stop:
            return
        if self.buf is None:
            self.buf = bytearray(CHUNK)
        mv = memoryview(self.buf)
        while start < stop:
            n = os.preadv(self.src, [mv[: min(CHUNK, stop - start)]], start)
            if n <= 0:
                raise StoreError("mailbox shrank while it was locked")
            self.write(mv[:n])
            start += n
            self._touched(n)


def _restatus(
    c: _Copier, src: int, e: ix.Entry, new_header: Callable[[bytes, frozenset[str]], bytes]
) -> ix.Entry:
    """Copy ``e``'s From line and write its header with the status headers of its flags
    (``new_header``); its entry where it is now (the body follows with the next verbatim run)."""
    offset = c.pos
    c.copy(e.offset, e.body_off)  # the From line
    old = os.pread(src, e.hdr_end - e.body_off, e.body_off)
    if len(old) != e.hdr_end - e.body_off:
        raise StoreError("mailbox shrank while it was locked")
    header = new_header(old, e.flags)
    c.write(header)
    body_len = e.end - e.hdr_end
    size = e.size - wire_size(served_header(old)) + wire_size(served_header(header))
    return e._replace(
        offset=offset,
        body_off=offset + (e.body_off - e.offset),
        hdr_end=c.pos,
        end=c.pos + body_len,
        size=size,
        fingerprint=fingerprint(header, body_len),
        header_sig=header_flags(header)[1],
    )


def copy_kept(
    src: int,
    out: int,
    state: ix.Index,
    gone: set[int],
    new_header: Callable[[bytes, frozenset[str]], bytes],
    touch: Callable[[], None] = lambda: None,
) -> ix.EntryTable:
    """Write ``state``'s file (open as ``src``) without the ``gone`` UIDs to ``out``, the status
    headers of dirty messages rewritten by ``new_header(header, flags)``; the new entries."""
    c = _Copier(src, out, touch)
    entries = ix.EntryTable()
    run = 0  # src offset where the verbatim run being built starts
    delta = 0  # out offset - src offset inside that run
    items = state.entries
    for i, e in enumerate(items):
        if e.uid in gone:
            c.copy(run, e.offset)
            run = items[i + 1].offset if i + 1 < len(items) else state.stamp.size
            delta = c.pos - run
        elif needs_status(e):
            c.copy(run, e.offset)
            entries.append(_restatus(c, src, e, new_header))
            run, delta = e.hdr_end, c.pos - e.hdr_end
        elif delta:  # only the offsets shift: every other field as it is (_replace)
            entries.append(e._replace(offset=e.offset + delta, body_off=e.body_off + delta,
                                      hdr_end=e.hdr_end + delta, end=e.end + delta))
        else:
            entries.append(e)
    c.copy(run, state.stamp.size)
    return entries
