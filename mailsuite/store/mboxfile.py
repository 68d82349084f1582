"""Blocking operations on one mbox file and its index. Run them in a thread, never on the reactor.

Every operation that changes the file, or parses it, holds both locks (``locking``). Each takes
the index state it starts from and returns the new state with the Changes it found or made; the
caller (``mboxmailbox.MboxMailbox``) publishes them on the reactor thread. The index is written
(fsync'ed) before a new UID is returned; where it is kept is ``mboxstate``.

Every file is reached through ``safepath``, walked again at each operation from the account's
home or the spool directory: no symbolic link is followed below them, and a mailbox must be a
regular file of the user with one link (else the operation, a delivery too, is refused). Without
a home directory the index is kept in memory only (the INBOX in the spool still works).
"""

from __future__ import annotations

import functools
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace

from twisted.logger import Logger

from mailsuite import heap
from mailsuite.accounts import Account
from mailsuite.fsutil import pread_all, write_all
from mailsuite.store import cleanup, mboxinplace, savedate
from mailsuite.store import index as ix
from mailsuite.store import modseq as ms
from mailsuite.store.interfaces import Changes, StoreError
from mailsuite.store.locking import DEFAULT_STALE_AFTER, HeldLock, locked_mailbox
from mailsuite.store.mboxformat import (
    describe, each_parsed, fingerprint, header_end, imap_base, make_from_line, parse_file,
    separator_at, to_stored, verified, with_status, x_uid,
)
from mailsuite.store.mboxrewrite import copy_kept
from mailsuite.store.mboxstate import INDEX_NAME, IndexKeeper
from mailsuite.store.safepath import Anchors, Dir, mail_gid, open_dir, refuse

log = Logger()

COPY = 4 << 20  # bytes copied at a time when rewriting

Result = tuple[ix.Index, Changes]


DOVECOT_PROBE = 64 * 1024  # read to see whether the first message has Dovecot's X-IMAPbase


class MboxFile(IndexKeeper):
    """The INBOX mbox of one account and its index."""

    def __init__(
        self,
        account: Account,
        path: str,
        folder_root: str,
        now: Callable[[], float],
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        index_dir: str | None = None,
        anchors: Anchors | None = None,
    ) -> None:
        """``anchors``: the account's trusted directories (``safepath``); by default its home
        and the directories holding ``path`` (the INBOX) and ``folder_root``."""
        self.account = account
        self.folder_root = os.path.abspath(folder_root)
        self._anchors = anchors or Anchors(
            account.uid, account.gid, account.home, path, self.folder_root
        )
        self.move(path, index_dir or os.path.join(self.folder_root, ".imap", "INBOX"))
        self._now = now
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        self._root = os.geteuid() == 0
        self.moving = mboxinplace.Moving()

    def move(self, path: str, index_dir: str) -> None:
        """The mailbox is now at ``path`` with its index in ``index_dir`` (folder renamed)."""
        self.path = os.path.abspath(path)
        self.index_dir = os.path.abspath(index_dir)
        self.index_path = os.path.join(self.index_dir, INDEX_NAME)
        self.place = self._anchors.place(self.path)
        self._parent = self.place.parent
        self._name = self.place.name
        self.index_place = self._anchors.place(self.index_dir)

    # -- safety and ownership -------------------------------------------------------------------

    def _mbox_owner(self) -> tuple[int, int] | None:
        if not self._root:
            return None
        gid = mail_gid()
        return self.account.uid, self.account.gid if gid is None else gid

    def _open(self, d: Dir, create: bool, created: list[bool]) -> int | None:
        try:
            fd, made = d.open_file(
                self._name, os.O_RDWR | os.O_APPEND, create, owner=self._mbox_owner()
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot open {self.path}: {e.strerror}") from e
        if made:
            created.append(True)
        return fd

    @contextmanager
    def _locked(self, exclusive: bool, create: bool = False) -> Iterator[tuple[HeldLock, bool]]:
        """Both locks, taken in the mailbox's directory walked again now (``safepath``). An
        expunge cut short (its journal) is finished first, under the exclusive locks only."""
        created: list[bool] = []
        for _ in range(3):  # a journal found once shared locks are held: again (bounded)
            d = self._parent_dir()
            if d is not None and not exclusive and mboxinplace.pending(d.fd, self._name):
                d.close()
                with self._locked(True):  # an expunge cut short is finished under these
                    pass
                d = self._parent_dir()
            if d is None:
                if create:
                    raise StoreError(f"cannot create {self.path}: its directory is gone")
                yield HeldLock(self._name, None), False
                return
            with d, locked_mailbox(
                self._name,
                functools.partial(self._open, d, create, created),
                exclusive=exclusive,
                timeout=self._lock_timeout,
                stale_after=self._stale_after,
                dir_fd=d.fd,
                full_path=self.path,
                dir_ident=d.ident,
            ) as held:
                if held.fd is not None and mboxinplace.pending(d.fd, self._name):
                    if not exclusive:
                        continue  # never recovered under shared locks: two could run it
                    mboxinplace.recover(held.fd, d.fd, self._name, held.touch)  # a crash's
                # none runs (the locks), none is cut short: one of ours that failed was recovered
                self.moving.settled()
                yield held, bool(created)
                return
        raise StoreError(f"{self.path}: an expunge cut short is still not finished")

    def _parent_dir(self) -> Dir | None:
        try:
            return open_dir(self._parent)
        except FileNotFoundError:  # its folder was removed from outside
            return None

    def _lstat(self) -> os.stat_result | None:
        try:
            with open_dir(self._parent) as d:
                st = d.lstat(self._name)
        except FileNotFoundError:
            return None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise refuse(self.path, "a symbolic link")
        return st

    # -- refresh --------------------------------------------------------------------------------

    def _from_dovecot(self, fd: int) -> Result | None:
        """The first index of a mailbox whose file holds Dovecot's state (``X-IMAPbase`` in the
        first message, ``X-UID`` in each): its UIDVALIDITY, UIDs and flags kept, so clients
        do not resync after a switch from Dovecot. None if the file has no such state."""
        st = os.fstat(fd)
        head = pread_all(fd, min(st.st_size, DOVECOT_PROBE), 0)
        if b"x-imapbase:" not in head.split(b"\n\n", 1)[0].lower():
            return None  # not Dovecot's: the whole file is not parsed twice (cold SELECT)
        parsed = parse_file(fd, 0, st.st_size, False)
        if not parsed:
            return None

        def header(p: ix.Parsed) -> bytes:
            return pread_all(fd, p.hdr_end - p.body_off, p.body_off)

        base = imap_base(header(parsed[0]))
        if base is None:
            return None
        validity, last_uid, _ = base
        if not self._adopt_validity(validity):
            return None
        x_uids = [x_uid(header(p)) for p in parsed]
        state, changes = ix.from_dovecot(
            parsed, x_uids, validity, last_uid, ix.Stamp.of(st), int(st.st_mtime)
        )
        self._save(state)
        log.info("{path}: UIDVALIDITY {validity} and {n} UIDs taken from Dovecot's headers",
                 path=self.path, validity=validity, n=len(state.entries))
        return state, changes

    def refresh(self, state: ix.Index | None) -> Result:
        """Bring ``state`` (None: not loaded yet) up to date with the file; save if it changed."""
        st = self._lstat()
        if state is not None and ix.Stamp.of(st) == state.stamp and not self.moving.count % 2:
            return state, Changes()  # (odd: an expunge in place failed, its recovery is due)
        with self._locked(exclusive=False) as (held, _):
            dirty, loaded = False, state is None
            if state is None:
                if held.dir_fd is not None:  # of a rewrite that was killed
                    cleanup.remove_rewrite_leftover(self.path, held.dir_fd)
                state = self._saved_index()
                if state is None and held.fd is not None:
                    adopted = self._from_dovecot(held.fd)
                    if adopted is not None:
                        return adopted
                if state is None:
                    state, dirty = ix.Index(uid_validity=self._new_validity()), True
            new, changes, added = self._refresh_locked(state, held.fd, held.st)
            if added is not None:
                new = self._grow(state, added, new.stamp, save=dirty)
            elif dirty or new is not state:
                self._save(new)
        if added is None and (new is not state or loaded):  # the index read, or the whole file
            heap.release(len(new.entries))  # parsed: the transient records' pages given back
        return new, changes

    def _intact(self, fd: int, e: ix.Entry, size: int) -> bool:
        if e.end > size:
            return False
        buf = pread_all(fd, e.end - e.offset, e.offset)
        sep = separator_at(buf, 0, len(buf))
        if sep is None or sep[0] != e.body_off - e.offset:
            return False
        hdr_end = header_end(buf, sep[0], len(buf))
        return fingerprint(buf[sep[0] : hdr_end], len(buf) - hdr_end) == e.fingerprint

    def _refresh_locked(
        self, state: ix.Index, fd: int | None, st: os.stat_result | None = None
    ) -> tuple[ix.Index, Changes, Sequence[ix.Entry] | None]:
        """(new state, changes, appended), nothing saved. When the file only grew, ``appended``
        holds the new entries and ``new`` is ``state`` with only its stamp changed: the caller
        adds them (``_grow``, O(new messages)). Otherwise ``appended`` is None and ``new`` is
        complete (``state`` itself if nothing changed). ``st``: the fstat of ``fd`` taken under
        the locks, if the caller has it."""
        if st is None and fd is not None:
            st = os.fstat(fd)
        stamp = ix.Stamp.of(st)
        if stamp == state.stamp:
            return state, Changes(), None
        fallback = int(st.st_mtime) if st is not None else int(self._now())
        if fd is None or stamp.size == 0:
            return (*ix.reconcile(state, [], stamp, fallback), None)
        old = state.stamp
        if state.entries and stamp.ino == old.ino and stamp.size >= old.size:
            last = state.entries[-1]
            if self._intact(fd, state.entries[0], stamp.size):
                tail = parse_file(fd, last.offset, stamp.size, True)
                if tail and (tail[0].fingerprint, tail[0].end) == (last.fingerprint, last.end):
                    added, changes = ix.extend(state, tail[1:], stamp, fallback)
                    return replace(state, stamp=stamp), changes, added
        parsed = each_parsed(fd, 0, stamp.size, False)  # (matched as it is parsed)
        return (*ix.reconcile(state, parsed, stamp, fallback), None)

    def _refreshed(self, state: ix.Index, fd: int | None) -> Result:
        """``_refresh_locked`` as one complete new state (a copy: for operations that rewrite
        the index anyway)."""
        new, changes, added = self._refresh_locked(state, fd)
        if added is not None:  # (a copy grown: UIDNEXT and HIGHESTMODSEQ follow ``added``)
            new = new.copy().grown(added, new.stamp)
        return new, changes

    # -- delivery -------------------------------------------------------------------------------

    def append(
        self,
        state: ix.Index | None,
        data: bytes,
        sender: str,
        flags: frozenset[str],
        date: int,
        tz: int | None = None,
    ) -> tuple[ix.Index | None, Changes, int | None]:
        """Append one message, durably. With ``state`` None (mailbox not open) the index is left
        alone (the next refresh finds the message); else the new state and UID are returned.
        ``tz``: the zone of the internal date (seconds east of UTC; None: the local zone)."""
        new, changes, uids = self.append_many(state, [(data, sender)], date, flags, tz)
        return new, changes, uids[0] if uids is not None else None

    def _added(
        self,
        state: ix.Index,
        changes: Changes,
        found: Sequence[ix.Entry] | None,
        mine: list[ix.Entry],
        stamp: ix.Stamp,
        whole: bool,
    ) -> ix.Index:
        """The state after appending ``mine`` to ``state`` as ``_refresh_locked`` left it (with
        ``found``, messages other programs appended, when not None): durable, in O(new
        messages) unless the refresh rebuilt the state (``whole``: the index is written)."""
        if whole:
            full = state.copy(uid_next=mine[-1].uid + 1, stamp=stamp,
                              highest_modseq=mine[-1].modseq)
            full.entries.extend(mine)
            self._save(full)
        else:
            full = self._grow(state, [*(found or ()), *mine], stamp)
        changes.added.extend(mine)
        return full

    def append_many(
        self,
        state: ix.Index | None,
        items: list[tuple[bytes, str]],
        date: int,
        flags: frozenset[str] = frozenset(),
        tz: int | None = None,
        each: list[tuple[frozenset[str], int, int | None]] | None = None,
    ) -> tuple[ix.Index | None, Changes, list[int] | None]:
        """Append several messages ``(data, sender)`` under one lock with one fsync (group
        commit of concurrent deliveries), each with ``flags`` (or its own flags, date and zone
        from ``each``: MULTIAPPEND), all or none (a failed write is cut off); see :meth:`append`."""
        each = each or [(flags, date, tz)] * len(items)
        with self._locked(exclusive=True, create=True) as (held, created):
            fd = held.fd
            assert fd is not None
            changes, added, before = Changes(), None, state
            if state is not None:
                state, changes, added = self._refresh_locked(state, fd, held.st)
            size = held.st.st_size if held.st is not None else os.fstat(fd).st_size
            tail = os.pread(fd, 2, size - 2) if size >= 2 else os.pread(fd, size, 0)
            # a previous writer may have left no final newline or blank line: fix it first
            prefix = (
                b"" if size == 0 or tail == b"\n\n" else b"\n" if tail.endswith(b"\n") else b"\n\n"
            )
            blobs, spans, pos = [], [], size
            for (data, sender), (_, when, _) in zip(items, each, strict=True):
                line = make_from_line(sender, when)
                blob = prefix + line + to_stored(data) + b"\n"
                spans.append((pos, len(prefix), len(prefix) + len(line), blob))
                blobs.append(blob)
                pos += len(blob)
                prefix = b""
            try:
                write_all(fd, b"".join(blobs))
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # none of them: the mailbox as it was
                raise
            if created:
                os.fsync(held.dir_fd)  # type: ignore[arg-type]
            now = int(self._now())  # the save date (RFC 8514) of each
            if state is None:  # (its save dates: the From lines' when it is next read)
                return None, changes, None
            first = added[-1].uid + 1 if added else state.uid_next
            uids = list(range(first, first + len(spans)))
            mine, modseq = [], state.highest_modseq + 1  # (that of ``added`` too)
            for uid, (base, start, body, blob), (fl, when, zone) in zip(uids, spans, each,
                                                                         strict=True):
                p = describe(blob, start, body, len(blob) - 1, when, base=base)
                mine.append(ix.entry_from(p, uid, ix.clean_flags(fl), when, zone, modseq, now))
            whole = added is None and before is not None and state.entries != before.entries
            new = self._added(state, changes, added, mine, ix.Stamp.of(os.fstat(fd)), whole)
        return new, changes, uids

    def move_all(self, state: ix.Index | None, target: MboxFile) -> Result:
        """RENAME INBOX: copy this file (messages, flags, UIDs) into ``target``, a new mailbox,
        then empty this one. A crash in between leaves the messages in both, never in neither."""
        with self._locked(exclusive=True) as (held, _):
            if state is None:
                state, _ = self._load_index()
            known = [e.uid for e in state.entries]  # what the sessions were shown
            state, _ = self._refreshed(state, held.fd)
            with target._locked(exclusive=True, create=True) as (out, _):
                assert out.fd is not None
                if os.fstat(out.fd).st_size:
                    raise StoreError(f"{target.path} is not empty")
                size = state.stamp.size if held.fd is not None else 0
                offset = 0
                while offset < size:
                    chunk = pread_all(held.fd, min(COPY, size - offset), offset)  # type: ignore[arg-type]
                    if not chunk:
                        raise StoreError(f"{self.path} shrank while locked")
                    write_all(out.fd, chunk)
                    offset += len(chunk)
                os.fsync(out.fd)
                os.fsync(out.dir_fd)  # type: ignore[arg-type]
                stamp = ix.Stamp.of(os.fstat(out.fd))
                copied = ix.Index(target._new_validity(), state.uid_next, stamp,
                                  hidden=state.hidden, highest_modseq=state.highest_modseq)
                copied.entries = savedate.fresh(state.entries, int(self._now()))  # moved there
                target._save(copied)
            if held.fd is not None:
                os.ftruncate(held.fd, 0)
                os.fsync(held.fd)
            modseq = state.highest_modseq + 1
            new = state.copy(
                stamp=ix.Stamp.of(os.fstat(held.fd)) if held.fd is not None else state.stamp,
                entries=[], hidden=frozenset(), highest_modseq=modseq,
                vanished=state.vanished.add(set(known) - state.hidden, modseq),
            )
            self._save(new)
        return new, Changes(expunged=known)

    # -- flags and expunge ----------------------------------------------------------------------

    def set_flags(self, state: ix.Index, wanted: dict[int, frozenset[str]]) -> Result:
        """Record flags in the index journal (the file's Status headers follow at the next
        rewrite)."""
        new, changes, _ = self._store_flags(state, sorted(wanted), lambda e: wanted[e.uid])
        return new, changes

    def change_flags(
        self,
        state: ix.Index,
        uids: list[int],
        add: frozenset[str],
        remove: frozenset[str],
        replace: frozenset[str] | None,
    ) -> tuple[ix.Index, Changes, dict[int, frozenset[str]]]:
        """Flags changed relative to the current state (``replace``, else ``| add - remove``);
        the resulting flags of every UID present."""
        if replace is not None:
            return self._store_flags(state, sorted(set(uids)), lambda e: replace)
        return self._store_flags(state, sorted(set(uids)), lambda e: (e.flags | add) - remove)

    def _store_flags(
        self, state: ix.Index, uids: list[int], wanted: Callable[[ix.Entry], frozenset[str]]
    ) -> tuple[ix.Index, Changes, dict[int, frozenset[str]]]:
        changes = Changes()
        result: dict[int, frozenset[str]] = {}
        entries = state.entries
        copied, modseq = False, state.highest_modseq + 1
        i = 0
        for uid in uids:  # ascending: each search starts where the last one ended
            i = entries.position(uid, i)
            if i == len(entries):
                break
            e = entries[i]
            if e.uid != uid:
                continue
            flags = ix.clean_flags(wanted(e))
            if flags != e.flags:
                if not copied:
                    entries, copied = entries.copy(), True
                entries[i] = e._replace(flags=flags, modseq=modseq)
                changes.flags[uid] = flags
            result[uid] = flags
        if not changes:
            return state, changes, result
        new = state.copy(entries=entries, highest_modseq=modseq)
        records = ix.log_records(changes.flags) + ms.record(b"M", modseq, changes.flags)
        if not self._journal(new, records, len(entries)):
            self._save(new)
        return new, changes, result

    def expunge(self, state: ix.Index, uids: list[int]) -> tuple[ix.Index, Changes, list[int]]:
        """Remove these messages by rewriting the file; mail that arrived meanwhile is kept."""
        with self._locked(exclusive=True) as (held, _):
            new, changes = self._refreshed(state, held.fd)
            gone = sorted(set(uids).intersection(new.entries.uid))
            if gone and held.fd is not None:
                new = self._compact(held, new, set(gone))
                changes.expunged.extend(gone)
                if told := set(gone) - state.hidden:  # (the hidden ones' expunge: recorded)
                    new = new.copy(highest_modseq=new.highest_modseq + 1, vanished=new.vanished
                                   .add(told, new.highest_modseq + 1))
            if new.hidden & set(uids):  # their mark goes with them
                new = new.copy(hidden=new.hidden - set(uids))
            if new is not state:
                self._save(new)
        return new, changes, gone

    def _compact(self, held: HeldLock, state: ix.Index, gone: set[int]) -> ix.Index:
        if state.stamp.size < mboxinplace.INPLACE_MIN or held.dir_fd is None:
            return self._rewrite(held, state, gone)
        assert held.fd is not None
        new = mboxinplace.expunge(held.fd, held.dir_fd, self._name, state, gone, with_status,
                                  lambda ino: self.note_compaction(state, ino, gone),
                                  held.touch, self.moving)  # (lockless reads: not trusted)
        return new if new is not None else self._rewrite(held, state, gone)  # (too many steps)

    def _rewrite(self, held: HeldLock, state: ix.Index, gone: set[int]) -> ix.Index:
        """Write the kept messages (stale Status headers updated) to a temp file, rename it over."""
        src, dir_fd = held.fd, held.dir_fd
        assert src is not None and dir_fd is not None
        st = os.fstat(src)
        if st.st_size != state.stamp.size:
            raise StoreError(f"{self.path} changed while locked")
        name = self._name
        tmp = f".{name}{cleanup.REWRITE_SUFFIX}"
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)  # left by a crash
        out = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            entries = self._copy_kept(held, state, gone, out)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            if self._root:
                os.fchown(out, st.st_uid, st.st_gid)
            os.fsync(out)
            now = os.lstat(name, dir_fd=dir_fd)
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                # another program put a new file there without taking the locks (cp, install):
                # renaming over it would throw its mail away
                raise FileReplaced(f"{self.path} was replaced while it was being rewritten")
            self.note_compaction(state, os.fstat(out).st_ino, gone)
            old = os.dup(src)
            try:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.close(old)
                raise
        except BaseException:
            os.close(out)
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        # The replaced file's blocks are freed when its last descriptor closes, which takes a
        # while for a big file: let a helper thread do that after we answer (the lock itself
        # is released explicitly, not by the close).
        threading.Thread(target=os.close, args=(old,), daemon=True).start()
        try:
            os.fsync(dir_fd)
            stamp = ix.Stamp.of(os.fstat(out))
        finally:
            os.close(out)
        return state.copy(stamp=stamp, entries=entries)

    def _copy_kept(
        self, held: HeldLock, state: ix.Index, gone: set[int], out: int
    ) -> ix.EntryTable:
        assert held.fd is not None
        return copy_kept(held.fd, out, state, gone, with_status, held.touch)

    # -- reading --------------------------------------------------------------------------------

    def read(self, e: ix.Entry, headers_only: bool = False) -> bytes | None:
        """The message as served (state headers hidden); None if the file no longer has it there."""
        data, _ = self.read_keeping(e, False, headers_only)
        return data

    def read_keeping(
        self, e: ix.Entry, keep: bool, headers_only: bool = False
    ) -> tuple[bytes | None, tuple[int, int] | None]:
        """As :meth:`read`; with ``keep`` the file descriptor it read with stays open and is
        returned with its inode, ``(fd, ino)``, for reads on the reactor thread (the caller
        owns it then: ``MboxMailbox`` reads with ``os.preadv(..., RWF_NOWAIT)``)."""
        fd = self._open_read()
        if fd is None:
            return None, None
        try:
            data = self._read_at(fd, e, headers_only)
            if keep:
                kept, fd = (fd, os.fstat(fd).st_ino), -1
                return data, kept
            return data, None
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_read(self) -> int | None:
        """The mailbox opened for reading, walked again now; None if it is missing."""
        try:
            with open_dir(self._parent) as d:
                fd, _ = d.open_file(self._name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read {self.path}: {err.strerror}") from err
        return fd

    def read_many(self, entries: list[ix.Entry], headers_only: bool) -> dict[int, bytes | None]:
        fd = self._open_read()
        if fd is None:
            return {e.uid: None for e in entries}
        try:
            return {e.uid: self._read_at(fd, e, headers_only) for e in entries}
        finally:
            os.close(fd)

    def _read_at(self, fd: int, e: ix.Entry, headers_only: bool) -> bytes | None:
        stop = e.hdr_end if headers_only else e.end
        before = self.moving.count
        buf = pread_all(fd, stop - e.offset, e.offset)
        return None if self.moving.moved(before) else verified(e, buf, headers_only)


class FileReplaced(StoreError):
    """The mailbox file was replaced by another program during a rewrite (left as it is)."""
