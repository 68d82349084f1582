"""Expunge in place: the kept messages after the first removed one moved down over it, with a
recovery journal. Blocking: run it in a thread, holding both locks of the mailbox (exclusive).

Only the part of the file from the first removed message on is written (a full rewrite copies
the whole file to a new one). What is written is planned first: "moves" (``dst, src, n``: the
bytes at ``src`` go to ``dst < src``) and "literals" (``dst, data``: the new Status/X-Status/
X-Keywords header block of a message whose headers no longer say its flags, written where the
shift leaves room for it; one that would grow into bytes not yet moved is moved as it is). The
plan is written to the journal ``.NAME.mailsuite-expunge`` beside the mbox and made durable
before the mbox is touched; the moves are then done in steps no longer than their shift (a step
never overwrites its own source), and after each step the journal's progress slot says how far
it got. A journal without its end mark (cut short while written) means the mbox was not touched
yet: it is removed. With the end mark, ``recover`` (run under the exclusive locks before the
file is read, ``mboxfile.MboxFile._locked``) finishes the plan from the last progress recorded
(the step after it, redone, still finds its source intact), truncates the file and removes the
journal. A crash of the process at any instant (between any two system calls, or in the middle
of one) so leaves, once recovered, every kept message exactly once and none of the removed.
The progress slots are not synced step by step: after a power loss in the middle of the moves
the file may hold torn messages (the plan, the final data and the journal's removal are synced).
The server's start (``cleanup.clean_spool``) finishes a journal left in the spool before it
removes the dead process's dotlock; mail another program appended after the crash anyway (it
broke that dotlock) is moved down behind the kept messages by the recovery.

The final truncate (to T) is journaled too, so that such appended mail is told from the stale
tail: a mark byte (``MARK``) is written at T, in the tail the truncate removes, then the piece
``_TRUNCATING`` with T is noted and synced, then the file is truncated and ``_DONE`` noted. A
recovery that finds ``_TRUNCATING`` and the mark still at T copies what follows the stale bytes
(appended mail) down to T and truncates behind it; no mark (a message starts with "From "), or
the file ending at T, and the truncate was done: what follows T is appended mail, kept. A second
crash during that copy, with mail appended before both recoveries, is not covered.

Status headers are written only from the first removed message on: those of messages before it
stay as they were until a rewrite reaches them (the flags are the index's; a parse from scratch,
index lost, takes those headers'). Files under ``INPLACE_MIN``, and plans of more than
``MAX_STEPS`` steps, are rewritten whole instead (``mboxfile.MboxFile._rewrite``).

Index entries of moved messages only shift (the offsets, by position; every other field is
carried as it is: fields added to ``index.Entry`` go through); a message with a new header block
gets its new header's size, fingerprint and signature.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from twisted.logger import Logger

from mailsuite.store import index as ix
from mailsuite.store.interfaces import StoreError
from mailsuite.store.mboxformat import fingerprint, header_flags, served_header
from mailsuite.store.mboxrewrite import status_due
from mailsuite.wire import wire_size

log = Logger()

JOURNAL_SUFFIX = ".mailsuite-expunge"
MAGIC = b"mailsuite-expunge 1\n"
#: below this size the whole file is rewritten (``mboxfile.MboxFile._rewrite``): it costs
#: little, and writes the status headers of every message, also before the first removed one
INPLACE_MIN = 16 << 20
CHUNK = 8 << 20  # the longest step of a move
#: more steps than this (a tiny message removed before a long run: steps as short as it) and
#: the whole file is rewritten instead (a few microseconds a step: the rewrite costs less)
MAX_STEPS = 200_000
TOUCH_EVERY = 64 << 20  # bytes moved between two touches of our dotlock (it must not look stale)
_SLOT = struct.Struct("<QQQI")  # progress: sequence, piece, bytes done in it, crc32
_DONE = (1 << 64) - 1  # the piece number of "all moved and the file truncated"
#: the piece number of "all moved, the file about to be truncated to <done>" (``_Runner.finish``)
_TRUNCATING = _DONE - 1
#: written at the truncate's target first, in the stale tail it removes: still there, the
#: truncate was not done (a message appended since starts with "From ")
MARK = b"\x00"

Move = tuple[int, int, int]  # dst, src, length
Literal = tuple[int, bytes]  # dst, data
Piece = Move | Literal


class IO:
    """The system calls that change or read the files, in one place: the crash tests stop the
    process's work after any one of them (``tests.test_store_inplace``)."""

    pread = staticmethod(os.pread)
    pwrite = staticmethod(os.pwrite)

    @staticmethod
    def copy_file_range(fd: int, n: int, src: int, dst: int) -> int:
        return os.copy_file_range(fd, fd, n, src, dst)  # (Linux 5.3 on: within one file)

    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    ftruncate = staticmethod(os.ftruncate)
    unlink = staticmethod(os.unlink)
    open = staticmethod(os.open)


io = IO()


class Moving:
    """Counts the in-place expunges of one file, odd while one runs: a read made without the
    locks (``mboxfile.MboxFile.read``) is not trusted if one ran meanwhile (a seqlock). One
    that failed half way leaves it odd until its recovery is done (``settled``)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.count += 1

    def settled(self) -> None:
        self.count += self.count % 2

    def moved(self, before: int) -> bool:
        """Whether bytes read since the count was ``before`` may have been moved meanwhile."""
        return bool(before % 2) or self.count != before


def journal_name(name: str) -> str:
    return f".{name}{JOURNAL_SUFFIX}"


@dataclass
class Plan:
    ino: int
    old_size: int
    new_size: int
    pieces: list[Piece]

    def encode(self) -> bytes:
        out = [MAGIC, b"I %d %d %d %d\n" % (self.ino, self.old_size, self.new_size,
                                            len(self.pieces))]
        for p in self.pieces:
            if len(p) == 3:
                out.append(b"M %d %d %d\n" % p)
            else:
                out.append(b"L %d %d\n" % (p[0], len(p[1])))
                out.append(p[1])
        body = b"".join(out)
        return body + b"E %08x\n" % zlib.crc32(body)


def decode(data: bytes) -> tuple[Plan, int] | None:
    """The plan of a journal and where its progress slots start; None unless it is complete."""
    if not data.startswith(MAGIC):
        return None
    try:
        pos = len(MAGIC)
        end = data.index(b"\n", pos)
        ino, old, new, count = map(int, data[pos + 2 : end].split(b" "))
        pos = end + 1
        pieces: list[Piece] = []
        for _ in range(count):
            end = data.index(b"\n", pos)
            w = data[pos:end].split(b" ")
            pos = end + 1
            if w[0] == b"M":
                pieces.append((int(w[1]), int(w[2]), int(w[3])))
            else:
                n = int(w[2])
                pieces.append((int(w[1]), data[pos : pos + n]))
                pos += n
        end = data.index(b"\n", pos)
        if data[pos:end] != b"E %08x" % zlib.crc32(data[:pos]):
            return None
    except ValueError:  # cut short (or damaged): index() found no newline, a number is cut
        return None
    return Plan(ino, old, new, pieces), end + 1


def _slot(seq: int, piece: int, done: int) -> bytes:
    head = _SLOT.pack(seq, piece, done, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def progress(data: bytes, slots: int) -> tuple[int, int, int]:
    """(sequence, piece, bytes done in it) of the newest intact progress slot; (0, 0, 0) if
    there is none."""
    best = (0, 0, 0)
    for i in range(2):
        raw = data[slots + i * _SLOT.size : slots + (i + 1) * _SLOT.size]
        if len(raw) == _SLOT.size:
            seq, piece, done, crc = _SLOT.unpack(raw)
            if crc == zlib.crc32(raw[:-4]) and seq > best[0]:
                best = (seq, piece, done)
    return best


# -- planning -----------------------------------------------------------------------------------


def plan(
    fd: int,
    state: ix.Index,
    gone: set[int],
    new_header: Callable[[bytes, frozenset[str]], bytes],
    ino: int,
) -> tuple[Plan, Layout]:
    """What to write to remove ``gone`` from ``state``'s file (open as ``fd``), and where the
    kept messages are once it is written (``Layout.entries``: built only when the plan is
    taken, a new entry for every message after the first removed one)."""
    items = state.entries
    uids, sigs, flag_sets = items.uid, items.sigs, items.flags  # (the columns: no entry made)
    first = next(i for i, uid in enumerate(uids) if uid in gone)
    layout = Layout(items, first)
    pieces: list[Piece] = []
    r = w = items[first].offset  # the verbatim run being built starts at r, goes to w

    def flush(stop: int) -> None:
        nonlocal r, w
        if stop > r and w != r:
            pieces.append((w, r, stop - r))
        w += stop - r
        r = stop

    n = len(items)
    # the messages touched one by one: removed, or with status headers to write
    events = [i for i in range(first, n)
              if uids[i] in gone or status_due(sigs[i], flag_sets[i])]
    i = first
    for j in [*events, n]:
        layout.runs.append((i, j, w - r, None))  # a run of clean messages, moved as is
        if j == n:
            break
        e, i = items[j], j + 1
        if e.uid in gone:
            flush(e.offset)
            r = items[j + 1].offset if j + 1 < n else state.stamp.size
            continue
        offset = w + (e.offset - r)
        header = _restatus(fd, e, new_header)
        body_off = offset + (e.body_off - e.offset)
        if body_off + len(header[0]) <= e.hdr_end:  # room left by what was removed
            flush(e.body_off)
            pieces.append((w, header[0]))
            w, r = w + len(header[0]), e.hdr_end
            layout.runs.append((j, j, 0, _moved(e, offset, body_off, header)))
        else:
            layout.runs.append((j, j + 1, w - r, None))
    flush(state.stamp.size)
    return Plan(ino, state.stamp.size, w, pieces), layout


class Layout:
    """The entries of a plan's result, as runs of the old ones: (start, stop, shift, moved),
    ``items[start:stop]`` ``shift`` bytes further, then ``moved`` (an entry with its header
    rewritten) if not None. Kept as runs while the plan is weighed: a plan of too many steps
    is dropped without having made 100,000 entries (25 MB) for nothing."""

    def __init__(self, items: ix.EntryTable, first: int) -> None:
        self.items, self.first = items, first
        self.runs: list[tuple[int, int, int, ix.Entry | None]] = []

    def entries(self) -> ix.EntryTable:
        """The runs ``shift`` bytes further (``EntryTable.shifted``: the four offsets change,
        every other field is carried as it is)."""
        out = self.items[: self.first]
        for start, stop, shift, moved in self.runs:
            out.extend(self.items[start:stop].shifted(shift))
            if moved is not None:
                out.append(moved)
        return out


def steps(p: Plan) -> int:
    """How many steps the plan's moves take (each no longer than its shift)."""
    return sum(-(-item[2] // min(item[1] - item[0], CHUNK)) for item in p.pieces
               if len(item) == 3)


def _restatus(
    fd: int, e: ix.Entry, new_header: Callable[[bytes, frozenset[str]], bytes]
) -> tuple[bytes, bytes]:
    """(new header block, old header block) of ``e``."""
    old = os.pread(fd, e.hdr_end - e.body_off, e.body_off)
    if len(old) != e.hdr_end - e.body_off:
        raise StoreError("mailbox shrank while it was locked")
    return new_header(old, e.flags), old


def _moved(e: ix.Entry, offset: int, body_off: int, header: tuple[bytes, bytes]) -> ix.Entry:
    new, old = header
    body_len = e.end - e.hdr_end
    hdr_end = body_off + len(new)
    return e._replace(
        offset=offset, body_off=body_off, hdr_end=hdr_end, end=hdr_end + body_len,
        size=e.size - wire_size(served_header(old)) + wire_size(served_header(new)),
        fingerprint=fingerprint(new, body_len), header_sig=header_flags(new)[1],
    )


# -- doing --------------------------------------------------------------------------------------


@contextmanager
def positioned(fd: int) -> Iterator[None]:
    """``fd`` (opened O_APPEND for deliveries) writing where it is told meanwhile: with
    O_APPEND, Linux's pwrite writes at the end whatever the offset."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_APPEND)
    try:
        yield
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class _Runner:
    """Does a plan's pieces from (piece, done) on, recording progress in the journal."""

    def __init__(self, fd: int, jfd: int, slots: int, touch: Callable[[], None]) -> None:
        self.fd, self.jfd, self.slots, self.touch = fd, jfd, slots, touch
        self.seq = 1
        self.moved = 0
        self.in_kernel = hasattr(os, "copy_file_range")

    def note(self, piece: int, done: int) -> None:
        at = self.slots + (self.seq % 2) * _SLOT.size
        _pwrite_all(self.jfd, _slot(self.seq, piece, done), at)
        self.seq += 1

    def run(self, p: Plan, piece: int, done: int) -> None:
        for k in range(piece, len(p.pieces)):
            item = p.pieces[k]
            if len(item) == 2:
                _pwrite_all(self.fd, item[1], item[0])
            else:
                self.move(k, *item, done if k == piece else 0)
            self.note(k + 1, 0)

    def move(self, k: int, dst: int, src: int, n: int, done: int) -> None:
        step = min(src - dst, CHUNK)  # never over its own source
        while done < n:
            c = min(step, n - done)
            self.copy(src + done, dst + done, c)
            done += c
            self.note(k, done)
            self.moved += c
            if self.moved >= TOUCH_EVERY:
                self.touch()
                self.moved = 0

    def copy(self, src: int, dst: int, n: int) -> None:
        while n and self.in_kernel:
            try:
                got = io.copy_file_range(self.fd, n, src, dst)
            except OSError:
                self.in_kernel = False  # not here (old kernel, file system): read and write
                break
            if got <= 0:
                raise StoreError("mailbox shrank while it was locked")
            src, dst, n = src + got, dst + got, n - got
        if n:
            data = io.pread(self.fd, n, src)
            if len(data) != n:
                raise StoreError("mailbox shrank while it was locked")
            _pwrite_all(self.fd, data, dst)

    def finish(self, p: Plan, extra: int = 0) -> None:
        """Truncate the file to its new size. The target is noted first, with a mark in the
        tail removed: a recovery then tells whether the truncate was done (``truncating``)
        before it touches mail appended after a crash."""
        target = p.new_size + extra
        if os.fstat(self.fd).st_size > target:
            _pwrite_all(self.fd, MARK, target)
            io.fdatasync(self.fd)  # the mark is durable before the note that trusts it
            self.note(_TRUNCATING, target)
            io.fdatasync(self.jfd)
        self.truncate(target)

    def truncate(self, size: int) -> None:
        io.ftruncate(self.fd, size)
        io.fsync(self.fd)
        self.note(_DONE, 0)
        io.fdatasync(self.jfd)

    def truncating(self, p: Plan, target: int) -> None:
        """Recover a crash after the _TRUNCATING note. The mark still at ``target``: the
        stale bytes are [target, target + gap), mail appended after them is copied down to
        ``target``, the file truncated behind it. Else the truncate was done: everything
        after ``target`` is mail appended since, kept as it is. (A second crash in the middle
        of that copy, mail appended in both, is not covered: the copy is not journaled.)"""
        size = os.fstat(self.fd).st_size
        if size <= target or io.pread(self.fd, 1, target) != MARK:
            io.fsync(self.fd)  # the truncate (it may not have been synced)
            return
        gap = p.old_size - p.new_size
        n = max(size - target - gap, 0)
        step = min(gap, CHUNK) or CHUNK  # never over its own source
        done = 0
        while done < n:
            c = min(step, n - done)
            self.copy(target + gap + done, target + done, c)
            done += c
        self.truncate(target + n)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = io.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def expunge(
    fd: int,
    dir_fd: int,
    name: str,
    state: ix.Index,
    gone: set[int],
    new_header: Callable[[bytes, frozenset[str]], bytes],
    before_writing: Callable[[int], None],
    touch: Callable[[], None] = lambda: None,
    moving: Moving | None = None,
) -> ix.Index | None:
    """Remove ``gone`` from the file ``fd`` (``name`` in ``dir_fd``) described by ``state``;
    the new state. ``before_writing(ino)`` is called once the journal is durable, before the
    mbox is touched (the compaction record of the index journal); ``moving`` is entered while
    the mbox is being written. None, with nothing done, when the moves would take more than
    MAX_STEPS steps."""
    st = os.fstat(fd)
    if st.st_size != state.stamp.size:
        raise StoreError(f"{name} changed while locked")
    p, layout = plan(fd, state, gone, new_header, st.st_ino)
    if steps(p) > MAX_STEPS:
        return None
    # made before anything is written: a failure after the rewrite (MemoryError) would leave
    # the caller with the old state's offsets and no compaction mark
    entries = layout.entries()
    jname = journal_name(name)
    with suppress(FileNotFoundError):
        io.unlink(jname, dir_fd=dir_fd)  # stale: recovery found it not complete
    jfd = io.open(jname, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=dir_fd)
    try:
        head = p.encode()
        _pwrite_all(jfd, head, 0)
        io.fdatasync(jfd)
        io.fsync(dir_fd)
        before_writing(st.st_ino)
        with moving or Moving(), positioned(fd):
            runner = _Runner(fd, jfd, len(head), touch)
            runner.run(p, 0, 0)
            runner.finish(p)
    finally:
        os.close(jfd)
    io.unlink(jname, dir_fd=dir_fd)
    io.fsync(dir_fd)
    return state.copy(stamp=ix.Stamp.of(os.fstat(fd)), entries=entries)


def recover(fd: int, dir_fd: int, name: str, touch: Callable[[], None] = lambda: None) -> bool:
    """Finish (or drop, if it never started) an in-place expunge a crash cut short; call it
    holding the exclusive locks. True if there was a journal."""
    jname = journal_name(name)
    try:
        jfd = io.open(jname, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(jfd).st_size
        data = io.pread(jfd, size, 0)
        found = decode(data)
        if found is not None and found[0].ino == os.fstat(fd).st_ino:
            p, slots = found
            seq, piece, done = progress(data, slots)
            if piece == _TRUNCATING:
                with positioned(fd):
                    runner = _Runner(fd, jfd, slots, touch)
                    runner.seq = seq + 1
                    runner.truncating(p, done)
            elif piece != _DONE:
                # mail another program appended after the crash (it took the locks, a stale
                # dotlock broken) is moved down behind the kept messages: "piece" len(pieces)
                extra = max(os.fstat(fd).st_size - p.old_size, 0)
                with positioned(fd):
                    runner = _Runner(fd, jfd, slots, touch)
                    runner.seq = seq + 1  # overwrites the older slot first
                    runner.run(p, piece, done)
                    if extra:
                        runner.move(len(p.pieces), p.new_size, p.old_size, extra,
                                    done if piece == len(p.pieces) else 0)
                    runner.finish(p, extra)
            log.info("{name}: finished an expunge cut short", name=name)
        elif found is not None:
            log.warn("{name}: was replaced since its expunge was cut short: left as it is",
                     name=name)
    finally:
        os.close(jfd)
    io.unlink(jname, dir_fd=dir_fd)
    io.fsync(dir_fd)
    return True


def pending(dir_fd: int, name: str) -> bool:
    """Whether an in-place expunge of ``name`` was cut short (its journal is there)."""
    try:
        os.lstat(journal_name(name), dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
