"""One open mbox folder: ``MboxMailbox``, the IMailbox that every session with the folder open
shares (``mbox.MboxStore`` makes and keeps them; see its module docstring).

Its operations run one at a time under a DeferredLock, each doing its file work in a thread
(``mboxfile``) and publishing the new state, and telling the listeners, on the reactor thread.
An EXPUNGE is answered once marked in the index and the file compacted right after, as the
mailbox's next operation (see ``mbox``). Small messages whose bytes are in the page cache are
read on the reactor thread without blocking (``RWF_NOWAIT``).
"""

from __future__ import annotations

import gc
from array import array
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailsuite import heap
from mailsuite.store import entrytable as et
from mailsuite.store import index as ix
from mailsuite.store import events
from mailsuite.store import modseq as ms
from mailsuite.store.headercache import HeaderCache
from mailsuite.store.zones import offset_of
from mailsuite.store.interfaces import (
    Changes,
    IMailbox,
    Listener,
    StoreError,
    UnknownUID,
)
from mailsuite.store.mboxfile import FileReplaced, MboxFile, verified
from mailsuite.store.summary import Summary
from mailsuite.threads import Blocking

FREEZE_AT = 20_000  # entries in a new state that make it worth gc.freeze()
FAST_READ_MAX = 256 * 1024  # bigger messages are always read in a thread
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_gc_lock = threading.Lock()
_gc_quiet = 0
log = Logger()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No cyclic garbage collection while a thread builds a big mailbox state.

    A full collection walks every object of the process while holding the GIL; with 100,000s
    of index entries being made it runs again and again and stops the reactor thread for
    100 ms and more each time. Nested and concurrent uses count: the last one out re-enables.
    """
    global _gc_quiet
    with _gc_lock:
        _gc_quiet += 1
        if _gc_quiet == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_quiet -= 1
            if _gc_quiet == 0:
                gc.enable()


class MailboxOwner(Protocol):
    """What a mailbox needs of the store that made it (``mbox.MboxStore``)."""

    blocking: Blocking

    def now(self) -> datetime: ...

    def _forget(self, key: tuple[str, str], box: MboxMailbox) -> None: ...

    def admitted(self, account: Any, work: Callable[..., Any],
                 items: list[tuple[bytes, str]]) -> Callable[..., Any]: ...

    def after_write(self, d: defer.Deferred[Any], account: Any) -> defer.Deferred[Any]: ...


@implementer(IMailbox)
class MboxMailbox:
    """One open mbox file (INBOX) with its index."""

    def __init__(self, store: MailboxOwner, key: tuple[str, str], mfile: MboxFile) -> None:
        self.name = key[1]
        self.uid_validity = 0
        self.uid_next = 1
        self.messages: Sequence[Any] = ix.EntryTable()  # (index entries: MessageInfos)
        self.users = 0
        self._store = store
        self._key = key
        self._file = mfile
        self._state: ix.Index | None = None
        self._lock = defer.DeferredLock()
        self._listeners: list[Listener] = []
        self._summary = Summary()
        self._reader: tuple[int, int] | None = None  # (fd, inode) for reads on the reactor
        self._hidden: set[int] = set()  # expunged: gone from ``messages``, still in the file
        self._compaction_queued = False
        self._compacting = False  # the running operation is a compaction
        self._hcache = HeaderCache(mfile._index_dir, mfile._owner)
        self._changelog = ms.ChangeLog()  # what changed at which modseq (changed_since)

    # -- running operations ---------------------------------------------------------------------

    def _run(self, operation: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``operation(state, *args)`` in a thread, alone; publish its (state, changes, ...)."""

        def start() -> defer.Deferred[Any]:
            d = self._store.blocking(self._work, operation, self._state, args)
            return d.addCallback(self._publish)

        return self._lock.run(start)

    @staticmethod
    def _work(operation: Callable[..., Any], state: ix.Index | None, args: tuple[Any, ...]) -> Any:
        with quiet_gc():
            result = operation(state, *args)
            new = result[0]
            if new is not None and len(new.entries) >= FREEZE_AT:
                # A big new state: out of the collector's way before it runs again. Entries
                # hold no cycles (refcounting frees them): nothing is kept alive by this.
                gc.freeze()
        return result

    def _publish(self, outcome: tuple[Any, ...]) -> Any:
        """The new state becomes visible, in O(1): ``messages`` is the state's own list of
        entries (they are MessageInfos), never copied -- unless expunged messages wait for
        their compaction (then a copy without them)."""
        state, changes, *extra = outcome
        if state is None:
            self._tell(None, changes)
        else:
            if self._hidden and changes:
                changes = self._untold(changes, self._hidden)
            fresh = self._state is None or state.uid_validity != self._state.uid_validity
            old = self.messages
            self._state = state
            self._changelog.publish(state.highest_modseq, [*changes.flags, *(
                m.uid for m in changes.added)], fresh)
            self._hidden = set(state.hidden)
            self.uid_validity = state.uid_validity
            self.uid_next = state.uid_next
            self.messages = self._visible(state.entries)
            self._tell(old, changes, fresh)
            if fresh and self._hidden:
                self._compact()  # expunged before a crash, never compacted
        return extra[0] if extra else changes

    def _tell(self, old: Sequence[Any] | None, changes: Changes, fresh: bool = False) -> None:
        """``messages`` is new (``fresh``: a new or reloaded state) or changed from ``old`` by
        ``changes`` (``old`` None: nothing changed here): keep the summary, tell the listeners."""
        if fresh:
            self._summary.update(self.messages, changes, True)
        elif old is not None:
            if changes:
                self._summary.count(old, self.messages, changes)
            self._summary.update(self.messages, changes, False)
        for listener in list(self._listeners) if changes else ():
            listener(changes)
        if changes:
            events.mailbox_changed(self._store, self._key[0], self.name, changes)  # NOTIFY

    def _visible(self, entries: ix.EntryTable) -> ix.EntryTable:
        """The entries but those expunged and not yet compacted away (a copy without them)."""
        return entries.without(self._hidden) if self._hidden else entries

    @staticmethod
    def _untold(changes: Changes, told: set[int]) -> Changes:
        """``changes`` without what concerns messages whose EXPUNGE was already told."""
        return Changes(
            expunged=[u for u in changes.expunged if u not in told],
            added=[m for m in changes.added if m.uid not in told],
            flags={u: f for u, f in changes.flags.items() if u not in told},
        )

    def _entry(self, uid: int) -> ix.Entry | None:
        if self._state is None:
            return None
        entries = self._state.entries
        i = entries.position(uid)
        if i < len(entries) and entries.uid[i] == uid and uid not in self._hidden:
            return entries[i]
        return None

    def _entries(self, uids: list[int]) -> Sequence[ix.Entry]:
        """The entries of those of ``uids`` still present: for many in a short span, one walk
        of it (a search per UID is 17 key calls each at 100,000 messages), as a table (no
        entry made of each)."""
        entries = self._state.entries if self._state is not None else ix.EntryTable()
        if len(uids) > 64:
            lo = entries.position(min(uids))
            hi = entries.position(max(uids) + 1)
            if hi - lo <= 4 * len(uids):  # the span of the UIDs walked, not the whole index
                wanted, hidden, column = set(uids), self._hidden, entries.uid
                if hi - lo == len(wanted) and not hidden and column[lo:hi] == array(
                        "I", sorted(wanted)):
                    return entries[lo:hi]  # (a listing: every message of a span)
                return entries.take([k for k in range(lo, hi)
                                     if column[k] in wanted and column[k] not in hidden])
        return [e for e in map(self._entry, uids) if e is not None]

    def email_id(self, uid: int) -> str | None:
        """The message's fingerprint (IMailbox.email_id): the same after rewrites by mutt."""
        entry = self._entry(uid)
        return None if entry is None else entry.fingerprint

    @property
    def highest_modseq(self) -> int:
        """RFC 7162 HIGHESTMODSEQ of the state published (``modseq``)."""
        return self._state.highest_modseq if self._state is not None else 1

    @property
    def vanished(self) -> ms.Vanished:
        return self._state.vanished if self._state is not None else ms.EMPTY

    def changed_since(self, modseq: int) -> list[int] | None:
        """UIDs (a superset) changed after ``modseq``, without a pass; None if not known."""
        return self._changelog.since(modseq)

    def keywords(self) -> set[str]:
        """Every keyword a message of the mailbox has had since it was loaded (FLAGS)."""
        return self._summary.keywords

    def unseen_count(self) -> int:
        """How many messages have no ``\\Seen`` (STATUS UNSEEN), kept up to date: O(1)."""
        return self._summary.unseen

    def first_unseen(self) -> int | None:
        """The UID of the first message without ``\\Seen`` (SELECT's UNSEEN), or None."""
        return self._summary.first_unseen(self.messages)

    def _unchanged(self) -> bool:
        """Nothing for a refresh to do: a compaction runs (it holds the mbox's lock and tells
        what it found at its end: no SELECT waits for a big file's messages to move, a read
        does), or a stat (microseconds) says the file is as the state knows it, no work runs."""
        if self._state is None:
            return False
        if self._compacting:
            return True
        if self._lock.locked or self._file.moving.count % 2:
            return False  # (odd: an in-place compaction that failed half way, not recovered)
        try:
            st = os.lstat(self._file.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return False
        if st is not None and (stat.S_ISLNK(st.st_mode) or st.st_uid != self._file.account.uid):
            return False  # the refresh, walking the path safely, says what is wrong
        return ix.Stamp.of(st) == self._state.stamp

    def watch_paths(self) -> list[tuple[str, bool]]:
        """(path, is a directory) of what any change to this mailbox writes: the mbox file
        and the directory of its index (imap/hibernate.py watches them)."""
        return [(self._file.path, False), (self._file.index_dir, True)]

    # -- IMailbox -------------------------------------------------------------------------------

    def refresh(self) -> defer.Deferred[Changes]:
        if self._unchanged():
            return defer.succeed(Changes())  # no thread, no copy (every selected command)
        return self._run(self._file.refresh)

    def read(self, uid: int) -> defer.Deferred[bytes]:
        entry = self._entry(uid)
        if entry is None:
            return defer.fail(UnknownUID(uid))
        data = self._read_now(entry)
        if data is not None:
            return defer.succeed(data)
        return self._read_in_thread(uid)

    def _read_now(self, entry: ix.Entry) -> bytes | None:
        """The message read on the reactor thread if that cannot block: a small message whose
        bytes are all in the page cache (``preadv`` with ``RWF_NOWAIT`` fails with EAGAIN
        rather than wait for the disk), from the descriptor kept open on the file the state
        describes (same inode), checked as the threaded read checks it. None: use the thread."""
        reader, state = self._reader, self._state
        length = entry.end - entry.offset
        if (
            reader is None
            or state is None
            or reader[1] != state.stamp.ino
            or length > FAST_READ_MAX
        ):
            return None
        if not _RWF_NOWAIT:  # no way to read without blocking
            return None
        buf = bytearray(length)
        before = self._file.moving.count
        try:
            got = os.preadv(reader[0], [buf], entry.offset, _RWF_NOWAIT)
        except OSError:  # BlockingIOError (not cached), EOPNOTSUPP (no RWF_NOWAIT here)...
            return None
        if got != length or self._file.moving.moved(before):
            return None
        return verified(entry, buf)

    @defer.inlineCallbacks
    def _read_in_thread(self, uid: int) -> Any:
        for attempt in range(2):
            entry = self._entry(uid)
            if entry is None:
                raise UnknownUID(uid)
            state, reader = self._state, self._reader
            keep = state is not None and (reader is None or reader[1] != state.stamp.ino)
            data, kept = yield self._store.blocking(self._file.read_keeping, entry, keep)
            if kept is not None:
                self._keep_reader(kept)
            if data is not None:
                return data
            if attempt == 0:
                yield self._run(self._file.refresh)  # moved, or changed: look again, in turn
        raise StoreError(f"message {uid} keeps moving in {self._file.path}")

    def _keep_reader(self, reader: tuple[int, int] | None) -> None:
        """Keep ``reader`` (fd, inode) for ``_read_now``, closing the one it replaces; only
        while the mailbox is open (a rewrite renames a new file over: a later threaded read
        opens the new one)."""
        old, self._reader = self._reader, reader
        if old is not None:
            os.close(old[0])
        if self.users <= 0 and self._reader is not None:
            old, self._reader = self._reader, None
            os.close(old[0])

    @defer.inlineCallbacks
    def read_headers(self, uids: list[int]) -> Any:
        out: dict[int, bytes] = {}
        pending = list(uids)
        for attempt in range(2):
            found = yield self._store.blocking(self._file.read_many, self._entries(pending),
                                               True)
            out.update((uid, data) for uid, data in found.items() if data is not None)
            pending = [uid for uid, data in found.items() if data is None]
            if not pending or attempt:
                break
            yield self._run(self._file.refresh)  # moved, or changed: look again, in turn
        return out

    @defer.inlineCallbacks
    def header_fields(self, uids: list[int], names: list[bytes]) -> Any:
        """The header fields ``names`` of each UID still present, from the header cache
        (``headercache``) where it has them, else read from the file and cached."""
        wanted = frozenset(n.upper() for n in names)
        validity = self.uid_validity
        entries = self._entries(uids)
        found, missing = yield self._store.blocking(self._hcache.lookup, validity, entries,
                                                    wanted)
        for at in range(0, len(missing), 256):  # (each batch one write of the cache: < 128 KiB)
            prints = {e.uid: e.fingerprint for e in missing[at : at + 256]}
            headers = yield self.read_headers(list(prints))
            items = [(uid, prints[uid], h) for uid, h in headers.items()]
            found.update((yield self._store.blocking(self._hcache.add, validity, items, wanted,
                                                     len(self.messages))))
        return found

    def cached_header_fields(self, uids: list[int], names: list[bytes]) -> Any:
        """(the fields the header cache holds, {uid: its data for all of them}, {uid: its
        sent date}) of the UIDs it has, when it holds every field of ``names``; nothing is
        read from the mbox."""
        entries = self._entries(uids)
        return self._store.blocking(self._hcache.lookup_whole, self.uid_validity, entries,
                                    frozenset(n.upper() for n in names)).addCallback(
            lambda found: (found[0], found[1], found[3]))

    def set_flags(self, changes: dict[int, frozenset[str]]) -> defer.Deferred[None]:
        return self._run(self._file.set_flags, dict(changes)).addCallback(lambda _: None)

    def change_flags(
        self,
        uids: list[int],
        add: frozenset[str] = frozenset(),
        remove: frozenset[str] = frozenset(),
        replace: frozenset[str] | None = None,
    ) -> defer.Deferred[dict[int, frozenset[str]]]:
        # applied in the mailbox's turn to the state of that moment: another session's change
        # made meanwhile is kept (its +FLAGS and our -FLAGS both take effect)
        fixed = None if replace is None else frozenset(replace)
        return self._run(
            self._file.change_flags, list(uids), frozenset(add), frozenset(remove), fixed
        )

    def expunge(self, uids: list[int]) -> defer.Deferred[list[int]]:
        """Decided now (see the module docstring): the UIDs that were here, in order."""
        state = self._state
        if state is None:  # never loaded (not opened): the file right away
            return self._run(self._file.expunge, list(uids))
        gone = sorted(u for u in set(uids) if self._entry(u) is not None)
        if not gone:
            return defer.succeed([])

        def hidden(uids: list[int]) -> list[int]:
            self._compact()
            return uids

        return self._run(self._file.hide, gone).addCallback(hidden)

    def _compact(self) -> None:
        """Rewrite the file without the hidden messages, as the mailbox's next operation
        (once: messages hidden before it starts are all in it)."""
        if self._compaction_queued:
            return
        self._compaction_queued = True

        def start() -> defer.Deferred[Any] | None:
            self._compaction_queued = False
            todo = sorted(self._hidden)
            if not todo:
                return None
            self._compacting = True
            started = time.monotonic()

            def done(result: Any) -> Any:
                self._compacting = False
                return result

            d = self._store.blocking(self._work, self._file.expunge, self._state, (todo,))
            d.addBoth(done)
            d.addCallback(self._compacted, set(todo), started)
            d.addErrback(self._compaction_failed, todo)
            return d

        self._lock.run(start)

    def _compacted(self, outcome: tuple[Any, ...], todo: set[int], started: float) -> None:
        state, changes, gone = outcome
        log.info(
            "compacted {path}: {n} expunged messages removed in {seconds:.2f} s ({size} bytes)",
            path=self._file.path, n=len(gone), seconds=time.monotonic() - started,
            size=state.stamp.size,
        )
        changes = self._untold(changes, todo)  # their EXPUNGE was told when they were hidden
        self._hidden.difference_update(todo)
        self._publish((state, changes))
        # the old entries are gone with the old state (views let theirs go at their next
        # command): what the compaction and they held, given back to the system
        self._store.blocking(heap.release, len(state.entries) + len(todo))  # moved or removed

    def _compaction_failed(self, failure: Any, todo: list[int]) -> None:
        if failure.check(FileReplaced) and self._state is not None:
            # Another program put a new file in its place: the expunge is done as far as this
            # state goes (they leave it); what the new file has is found by the refresh, and a
            # message it still holds comes back as a new message, with a new UID.
            log.warn(  # twisted.logger.Logger has warn, not warning
                "{path} was replaced during its compaction: reading it again",
                path=self._file.path,
            )
            gone = set(todo)
            self._state = self._state.copy(
                entries=[e for e in self._state.entries if e.uid not in gone],
                hidden=self._state.hidden - gone,
            )
            self._publish((self._state, Changes()))
            self._run(self._file.refresh).addErrback(
                lambda f: log.failure("refresh of {path} failed", f, path=self._file.path))
            return
        # they stay hidden (told expunged); the next expunge or close tries again
        log.failure(
            "compacting {path} without {n} expunged messages failed; they stay hidden",
            failure, path=self._file.path, n=len(todo),
        )

    def settled(self) -> defer.Deferred[None]:
        """Fires when the operations queued so far (a compaction among them) are done."""
        return self._lock.run(lambda: None)

    def append(
        self,
        data: bytes,
        flags: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
    ) -> defer.Deferred[int]:
        return self._append(data, "MAILER-DAEMON", flags, internal_date)

    def append_messages(
        self, messages: list[tuple[bytes, frozenset[str], datetime | None]]
    ) -> defer.Deferred[list[int]]:
        """All of ``messages`` (data, flags, internal date or None) or none: one write, one
        fsync, refused as a whole over quota (MULTIAPPEND, RFC 3502)."""
        now = self._store.now()
        items = [(data, "MAILER-DAEMON") for data, _, _ in messages]
        each = [(frozenset(flags), int((when or now).timestamp()),
                 None if when is None else offset_of(when)) for _, flags, when in messages]
        account = self._file.account
        work = self._store.admitted(account, self._file.append_many, items)
        return self._store.after_write(
            self._run(work, items, 0, frozenset(), None, each), account)

    def append_moved(self, data: bytes, flags: frozenset[str] = frozenset(),
                     internal_date: datetime | None = None) -> defer.Deferred[int]:
        """``append`` of a message IMAP MOVE takes out of another mailbox of the account: not
        refused over quota (Dovecot too counts a move within one quota root as the size it
        adds less the size it expunges: nothing)."""
        return self._append(data, "MAILER-DAEMON", flags, internal_date, admit=False)

    def _append(
        self, data: bytes, sender: str, flags: frozenset[str], when: datetime | None,
        admit: bool = True,
    ) -> defer.Deferred[Any]:
        # APPEND's date keeps its zone; mail delivered here gets the local zone (as Dovecot)
        date = int((when or self._store.now()).timestamp())
        tz = None if when is None else offset_of(when)
        account = self._file.account  # quota (store/quota.py): admitted first, then the warning
        work = self._store.admitted(account, self._file.append, [(data, sender)]) if admit \
            else self._file.append
        return self._store.after_write(
            self._run(work, data, sender, frozenset(flags), date, tz), account)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _gone(self) -> None:
        """The folder was deleted: every message is expunged; the (empty) state stays."""
        old = self.messages
        self._hidden.clear()
        if self._state is not None:
            self._state = self._state.copy(stamp=ix.Stamp(0, 0, 0), entries=[],
                                           hidden=frozenset())
        self.messages = ix.EntryTable()
        self._keep_reader(None)
        self._tell(old, Changes(expunged=list(et.uids_of(old))))

    def close(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._keep_reader(None)
            if self._hidden:
                self._compact()  # an earlier one failed: try again before it is let go
            # forget it once its pending operations are done (a new open reads the saved index)
            self._lock.run(lambda: self._store._forget(self._key, self))
