"""Blocking operations on one mbox file and its index. Run them in a thread, never on the reactor.

Every operation that changes the file, or parses it, holds both locks (``locking``). Each takes
the index state it starts from and returns the new state with the Changes it found or made; the
caller (``mbox.MboxMailbox``) publishes them on the reactor thread. The index is written (fsync'ed)
before a new UID is returned.

Files are opened with O_NOFOLLOW (a symlinked mailbox is refused), a mailbox must be a regular
file with one link, and files and directories are created only inside the account's home or the
spool directory that holds the INBOX.
"""

from __future__ import annotations

import errno
import grp
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from twisted.logger import Logger

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store.interfaces import Changes, StoreError
from mailsuite.store.locking import DEFAULT_STALE_AFTER, HeldLock, locked_mailbox
from mailsuite.store.mboxformat import (
    describe,
    fingerprint,
    header_end,
    header_flags,
    make_from_line,
    parse,
    separator_at,
    served_header,
    to_stored,
    with_status,
)
from mailsuite.wire import crlf_size, wire_size

log = Logger()

WINDOW = 64 << 20  # bytes read at a time when parsing
COPY = 4 << 20  # bytes copied at a time when rewriting

Result = tuple[ix.Index, Changes]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _pread_all(fd: int, length: int, offset: int, chunk: int = COPY) -> bytes:
    parts = []
    while length > 0:
        data = os.pread(fd, min(length, chunk), offset)
        if not data:
            break
        parts.append(data)
        length -= len(data)
        offset += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def parse_file(fd: int, start: int, stop: int, first_is_separator: bool) -> list[ix.Parsed]:
    """Parse [start, stop) of the file a window at a time (memory stays bounded)."""
    out: list[ix.Parsed] = []
    window = WINDOW
    while start < stop:
        length = min(window, stop - start)
        buf = _pread_all(fd, length, start, chunk=length)
        if len(buf) < length:
            raise StoreError("mailbox shrank while it was locked")
        found = parse(buf, 0, len(buf), first_is_separator, base=start)
        if start + length >= stop:
            return out + found
        if len(found) < 2:
            window *= 2  # one message (or the junk before the first) larger than the window
            continue
        out.extend(found[:-1])  # the last one may be cut off by the window: parse it again
        start, first_is_separator = found[-1].offset, True
    return out


class MboxFile:
    """The INBOX mbox of one account and its index."""

    def __init__(
        self,
        account: Account,
        path: str,
        folder_root: str,
        now: Callable[[], float],
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.account = account
        self.path = os.path.abspath(path)
        self.index_dir = os.path.join(os.path.abspath(folder_root), ".imap", "INBOX")
        self.index_path = os.path.join(self.index_dir, "mailsuite.index")
        self._now = now
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        home = os.path.abspath(account.home)
        self._roots = [os.path.realpath(home)] + [
            os.path.realpath(p)
            for p in (os.path.dirname(self.path), os.path.abspath(folder_root))
            if not _under(p, home)
        ]
        self._root = os.geteuid() == 0

    # -- safety and ownership -------------------------------------------------------------------

    def _check_inside(self, directory: str) -> None:
        real = os.path.realpath(directory)
        if not any(_under(real, root) for root in self._roots):
            raise StoreError(f"{directory} leads outside the home and spool directories")

    def _mbox_owner(self) -> tuple[int, int] | None:
        if not self._root:
            return None
        try:
            gid = grp.getgrnam("mail").gr_gid
        except KeyError:
            gid = self.account.gid
        return self.account.uid, gid

    def _ensure_index_dir(self) -> None:
        parts = [os.path.dirname(os.path.dirname(self.index_dir)), os.path.dirname(self.index_dir)]
        for d in parts + [self.index_dir]:
            self._check_inside(os.path.dirname(d))
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            if self._root:
                os.lchown(d, self.account.uid, self.account.gid)
        self._check_inside(self.index_dir)

    def _open(self, create: bool, created: list[bool]) -> int | None:
        flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                if not create:
                    return None
                self._check_inside(os.path.dirname(self.path))
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue
                owner = self._mbox_owner()
                if owner:
                    os.fchown(fd, *owner)
                os.fchmod(fd, 0o600)
                created.append(True)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StoreError(f"{self.path} is a symbolic link: refused") from e
                raise StoreError(f"cannot open {self.path}: {e.strerror}") from e
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                raise StoreError(f"{self.path} is not a regular file with one link: refused")
            return fd

    @contextmanager
    def _locked(self, exclusive: bool, create: bool = False) -> Iterator[tuple[HeldLock, bool]]:
        created: list[bool] = []
        with locked_mailbox(
            self.path,
            lambda: self._open(create, created),
            exclusive=exclusive,
            timeout=self._lock_timeout,
            stale_after=self._stale_after,
        ) as held:
            yield held, bool(created)

    # -- index ----------------------------------------------------------------------------------

    def _load_index(self) -> tuple[ix.Index, bool]:
        """The saved index, or a new one (a new UIDVALIDITY) if there is none: (index, is_new)."""
        try:
            index = ix.read_index(self.index_path)
        except ix.CorruptIndex as e:
            log.warn("rebuilding index {path}: {why}", path=self.index_path, why=e)
            index = None
        if index is None:
            return ix.Index(uid_validity=int(self._now())), True
        return index, False

    def _save(self, index: ix.Index) -> None:
        self._ensure_index_dir()
        owner = (self.account.uid, self.account.gid) if self._root else None
        ix.write_index(self.index_path, index, owner)

    # -- refresh --------------------------------------------------------------------------------

    def refresh(self, state: ix.Index | None) -> Result:
        """Bring ``state`` (None: not loaded yet) up to date with the file; save if it changed."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{self.path} is a symbolic link: refused")
        if state is not None and ix.Stamp.of(st) == state.stamp:
            return state, Changes()
        with self._locked(exclusive=False) as (held, _):
            dirty = False
            if state is None:
                state, dirty = self._load_index()
            new, changes = self._refresh_locked(state, held.fd)
            if dirty or new is not state:
                self._save(new)
        return new, changes

    def _intact(self, fd: int, e: ix.Entry, size: int) -> bool:
        if e.end > size:
            return False
        buf = _pread_all(fd, e.end - e.offset, e.offset)
        sep = separator_at(buf, 0, len(buf))
        if sep is None or sep[0] != e.body_off - e.offset:
            return False
        hdr_end = header_end(buf, sep[0], len(buf))
        return fingerprint(buf[sep[0] : hdr_end], len(buf) - hdr_end) == e.fingerprint

    def _refresh_locked(self, state: ix.Index, fd: int | None) -> Result:
        """The new state (``state`` itself if nothing changed); not saved."""
        st = os.fstat(fd) if fd is not None else None
        stamp = ix.Stamp.of(st)
        if stamp == state.stamp:
            return state, Changes()
        fallback = int(st.st_mtime) if st is not None else int(self._now())
        if fd is None or stamp.size == 0:
            return ix.reconcile(state, [], stamp, fallback)
        old = state.stamp
        if state.entries and stamp.ino == old.ino and stamp.size >= old.size:
            last = state.entries[-1]
            if self._intact(fd, state.entries[0], stamp.size):
                tail = parse_file(fd, last.offset, stamp.size, True)
                if tail and (tail[0].fingerprint, tail[0].end) == (last.fingerprint, last.end):
                    return ix.extend(state, tail[1:], stamp, fallback)
        return ix.reconcile(state, parse_file(fd, 0, stamp.size, False), stamp, fallback)

    # -- delivery -------------------------------------------------------------------------------

    def append(
        self, state: ix.Index | None, data: bytes, sender: str, flags: frozenset[str], date: int
    ) -> tuple[ix.Index | None, Changes, int | None]:
        """Append one message, durably. With ``state`` None (mailbox not open) the index is left
        alone (the next refresh finds the message); else the new state and UID are returned."""
        with self._locked(exclusive=True, create=True) as (held, created):
            fd = held.fd
            assert fd is not None
            changes = Changes()
            if state is not None:
                state, changes = self._refresh_locked(state, fd)
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 2, size - 2) if size >= 2 else os.pread(fd, size, 0)
            # a previous writer may have left no final newline or blank line: fix it first
            prefix = (
                b"" if size == 0 or tail == b"\n\n" else b"\n" if tail.endswith(b"\n") else b"\n\n"
            )
            line = make_from_line(sender, date)
            blob = prefix + line + to_stored(data) + b"\n"
            _write_all(fd, blob)
            os.fsync(fd)
            if created:
                ix.fsync_dir(os.path.dirname(self.path))
            if state is None:
                return None, changes, None
            p = describe(blob, len(prefix), len(prefix) + len(line), len(blob) - 1, date, base=size)
            entry = ix.entry_from(p, state.uid_next, ix.clean_flags(flags), date)
            new = state.copy(uid_next=state.uid_next + 1, stamp=ix.Stamp.of(os.fstat(fd)))
            new.entries.append(entry)
            self._save(new)
        changes.added.append(entry.info())
        return new, changes, entry.uid

    def append_many(
        self, state: ix.Index | None, items: list[tuple[bytes, str]], date: int
    ) -> tuple[ix.Index | None, Changes, list[int] | None]:
        """Append several messages ``(data, sender)`` under one lock with one fsync (group
        commit of concurrent deliveries); otherwise exactly as :meth:`append`."""
        with self._locked(exclusive=True, create=True) as (held, created):
            fd = held.fd
            assert fd is not None
            changes = Changes()
            if state is not None:
                state, changes = self._refresh_locked(state, fd)
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 2, size - 2) if size >= 2 else os.pread(fd, size, 0)
            prefix = (
                b"" if size == 0 or tail == b"\n\n" else b"\n" if tail.endswith(b"\n") else b"\n\n"
            )
            blobs, spans, pos = [], [], size
            for data, sender in items:
                line = make_from_line(sender, date)
                blob = prefix + line + to_stored(data) + b"\n"
                spans.append((pos, len(prefix), len(prefix) + len(line), blob))
                blobs.append(blob)
                pos += len(blob)
                prefix = b""
            _write_all(fd, b"".join(blobs))
            os.fsync(fd)
            if created:
                ix.fsync_dir(os.path.dirname(self.path))
            if state is None:
                return None, changes, None
            first = state.uid_next
            new = state.copy(uid_next=first + len(spans), stamp=ix.Stamp.of(os.fstat(fd)))
            uids = list(range(first, first + len(spans)))
            for uid, (base, start, body, blob) in zip(uids, spans):
                p = describe(blob, start, body, len(blob) - 1, date, base=base)
                entry = ix.entry_from(p, uid, frozenset(), date)
                new.entries.append(entry)
                changes.added.append(entry.info())
            self._save(new)
        return new, changes, uids

    # -- flags and expunge ----------------------------------------------------------------------

    def set_flags(self, state: ix.Index, wanted: dict[int, frozenset[str]]) -> Result:
        """Record flags in the index (the file's Status headers follow at the next rewrite)."""
        changes = Changes()
        entries = []
        for e in state.entries:
            flags = wanted.get(e.uid)
            if flags is not None and ix.clean_flags(flags) != e.flags:
                e = replace(e, flags=ix.clean_flags(flags))
                changes.flags[e.uid] = e.flags
            entries.append(e)
        if not changes:
            return state, changes
        new = state.copy(entries=entries)
        self._save(new)
        return new, changes

    def expunge(self, state: ix.Index, uids: list[int]) -> tuple[ix.Index, Changes, list[int]]:
        """Remove these messages by rewriting the file; mail that arrived meanwhile is kept."""
        with self._locked(exclusive=True) as (held, _):
            new, changes = self._refresh_locked(state, held.fd)
            gone = sorted(set(uids) & {e.uid for e in new.entries})
            if gone and held.fd is not None:
                new = self._rewrite(held, new, set(gone))
                changes.expunged.extend(gone)
            if new is not state:
                self._save(new)
        return new, changes, gone

    def _rewrite(self, held: HeldLock, state: ix.Index, gone: set[int]) -> ix.Index:
        """Write the kept messages (Status headers updated) to a temp file and rename it over."""
        src = held.fd
        assert src is not None
        st = os.fstat(src)
        if st.st_size != state.stamp.size:
            raise StoreError(f"{self.path} changed while locked")
        directory, name = os.path.split(self.path)
        tmp = os.path.join(directory, f".{name}.mailsuite-rewrite")
        try:
            os.unlink(tmp)  # left by a crash
        except FileNotFoundError:
            pass
        out = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            entries = self._copy_kept(held, state, gone, out)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            if self._root:
                os.fchown(out, st.st_uid, st.st_gid)
            os.fsync(out)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(out)
            os.unlink(tmp)
            raise
        try:
            ix.fsync_dir(directory)
            stamp = ix.Stamp.of(os.fstat(out))
        finally:
            os.close(out)
        return state.copy(stamp=stamp, entries=entries)

    def _copy_kept(
        self, held: HeldLock, state: ix.Index, gone: set[int], out: int
    ) -> list[ix.Entry]:
        src = held.fd
        assert src is not None
        pos = 0
        entries = []
        touched = 0
        with os.fdopen(out, "wb", buffering=COPY, closefd=False) as f:
            if state.entries:
                pos += f.write(_pread_all(src, state.entries[0].offset, 0))
            for e in state.entries:
                if e.uid in gone:
                    continue
                line = _pread_all(src, e.body_off - e.offset, e.offset)
                header = _pread_all(src, e.hdr_end - e.body_off, e.body_off)
                new_header = with_status(header, e.flags)
                f.write(line)
                f.write(new_header)
                body_len = e.end - e.hdr_end
                offset = e.hdr_end
                last = b"\n"  # the header block ends in one
                body_wire = 0  # wire size of the body as written (it ends in a line end)
                while offset < e.end:
                    chunk = _pread_all(src, min(COPY, e.end - offset), offset)
                    if not chunk:
                        raise StoreError(f"{self.path} shrank while locked")
                    f.write(chunk)
                    offset += len(chunk)
                    body_wire += crlf_size(chunk) - (last == b"\r" and chunk[:1] == b"\n")
                    last = chunk[-1:]
                fix = b"" if last == b"\n" else b"\n"  # a last message cut short
                f.write(fix + b"\n")
                if fix:
                    body_wire += 2 - (last == b"\r")
                body_off = pos + len(line)
                hdr_end = body_off + len(new_header)
                entries.append(
                    replace(
                        e,
                        offset=pos,
                        body_off=body_off,
                        hdr_end=hdr_end,
                        end=hdr_end + body_len + len(fix),
                        size=wire_size(served_header(new_header)) + body_wire,
                        fingerprint=fingerprint(new_header, body_len + len(fix)),
                        header_sig=header_flags(new_header)[1],
                    )
                )
                pos = hdr_end + body_len + len(fix) + 1
                touched += e.end - e.offset
                if touched > 64 << 20:
                    held.touch()
                    touched = 0
        return entries

    # -- reading --------------------------------------------------------------------------------

    def read(self, e: ix.Entry, headers_only: bool = False) -> bytes | None:
        """The message as served (state headers hidden); None if the file no longer has it there."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read {self.path}: {err.strerror}") from err
        try:
            return self._read_at(fd, e, headers_only)
        finally:
            os.close(fd)

    def read_many(self, entries: list[ix.Entry], headers_only: bool) -> dict[int, bytes | None]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {e.uid: None for e in entries}
        try:
            return {e.uid: self._read_at(fd, e, headers_only) for e in entries}
        finally:
            os.close(fd)

    def _read_at(self, fd: int, e: ix.Entry, headers_only: bool) -> bytes | None:
        stop = e.hdr_end if headers_only else e.end
        buf = _pread_all(fd, stop - e.offset, e.offset)
        sep = separator_at(buf, 0, len(buf))
        if len(buf) != stop - e.offset or sep is None or sep[0] != e.body_off - e.offset:
            return None
        header = buf[sep[0] : e.hdr_end - e.offset]
        if fingerprint(header, e.end - e.hdr_end) != e.fingerprint:
            return None
        return served_header(header) + buf[e.hdr_end - e.offset :]
