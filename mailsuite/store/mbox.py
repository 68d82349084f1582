"""The mbox mail store: IMailStore on the files Postfix local(8), mutt and Dovecot share.

INBOX is ``mailbox_config.inbox_path(account)`` (e.g. ``/var/mail/boss``); the other folders are
under ``folder_root(account)`` as ``mboxtree`` lays them out; the index of each folder lives in
``folder_root/.imap/<name>/mailsuite.index`` (see ``index``).

One ``MboxMailbox`` per folder is shared by every session that has it open (counted by open and
close), and kept a while after the last close (``idle_budget`` messages in all), so opening it
again costs a stat. A per-mailbox DeferredLock runs its operations one at a time; each runs its
file work in a thread (``mboxfile``) and the new state is published, and listeners told, on the
reactor thread. Folder operations (create, rename, delete) run one at a time per account and
wait for the open mailboxes they move.

EXPUNGE (IMAP, and POP3's QUIT) is answered as soon as it is decided: the messages leave
``messages`` and every session is told at once, and the file is compacted (rewritten without
them, ``MboxFile.expunge``) right after, as the mailbox's next operation. Until that is done
another program (mutt) still sees them in the file, and a crash brings them back with their UIDs
(nothing is lost; the client may expunge them again). Readers and new sessions do not wait for
the compaction (the file they read is unchanged until its end); writers (flags, appends,
deliveries) run after it. ``MboxStore.settle()`` waits for every pending compaction (the server
calls it on stop).
"""

from __future__ import annotations

import gc
import os
import stat
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.store import folders
from mailsuite.store import index as ix
from mailsuite.store.folders import INBOX
from mailsuite.store.interfaces import (
    SYSTEM_FLAGS,
    Changes,
    IMailbox,
    IMailStore,
    InvalidMailboxName,
    Listener,
    MailboxEntry,
    MailboxExists,
    MailboxNotFound,
    MessageInfo,
    StoreError,
    StoreRefused,
    UnknownUID,
)
from mailsuite.store.locking import DEFAULT_STALE_AFTER
from mailsuite.store.mboxfile import FileReplaced, MboxFile, verified
from mailsuite.store.mboxtree import FolderTree
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


def store_errors(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` with an OSError from the folder tree (a missing or unwritable home, a
    full disk) raised as StoreError: a clean NO for the client, not an internal error."""
    try:
        return work(*args)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise StoreError(f"{e.strerror or e}{where}") from e


class MailboxConfig(Protocol):
    def inbox_path(self, account: Account) -> str: ...

    def folder_root(self, account: Account) -> str: ...


_UID = attrgetter("uid")


class Summary:
    """What SELECT shows of a whole mailbox without a pass over its messages each time: the
    keywords in use and the first unseen message, kept up to date from each Changes."""

    def __init__(self) -> None:
        self.keywords: set[str] = set()
        self._seen_below = 0  # every message with a lower UID has \\Seen
        self.unseen = 0  # messages without \\Seen (STATUS UNSEEN)

    def count(self, old: list[Any], messages: list[Any], changes: Changes) -> None:
        """Keep ``unseen`` from the entries before (``old``) and the changes, in O(changes),
        or one pass when the change is about as big as the mailbox (a rebuild)."""
        if 4 * (len(changes.expunged) + len(changes.flags)) > len(messages) + 16:
            self.unseen = sum(1 for m in messages if "\\Seen" not in m.flags)
            return
        delta = sum(1 for m in changes.added if "\\Seen" not in m.flags)
        for uid in changes.expunged:
            i = bisect_left(old, uid, key=_UID)
            if i < len(old) and old[i].uid == uid and "\\Seen" not in old[i].flags:
                delta -= 1
        for uid, flags in changes.flags.items():
            i = bisect_left(old, uid, key=_UID)
            was = "\\Seen" not in old[i].flags if i < len(old) and old[i].uid == uid else False
            delta += ("\\Seen" not in flags) - was
        self.unseen = max(0, self.unseen + delta)

    def update(self, messages: list[Any], changes: Changes, fresh: bool) -> None:
        if fresh:  # a new or reloaded state: one pass over the distinct flag sets
            self.keywords = set()
            self._seen_below = 0
            for flags in {id(m.flags): m.flags for m in messages}.values():
                self.keywords.update(f for f in flags if f not in SYSTEM_FLAGS)
            self.unseen = sum(1 for m in messages if "\\Seen" not in m.flags)
            return
        for m in changes.added:
            if m.flags:
                self.keywords.update(f for f in m.flags if f not in SYSTEM_FLAGS)
        for uid, flags in changes.flags.items():
            self.keywords.update(f for f in flags if f not in SYSTEM_FLAGS)
            if "\\Seen" not in flags and uid < self._seen_below:
                self._seen_below = uid

    def first_unseen(self, messages: list[Any]) -> int | None:
        """Scans only from the last answer on: messages seen since are passed once."""
        start = bisect_left(messages, self._seen_below, key=_UID)
        for i in range(start, len(messages)):
            m = messages[i]
            if "\\Seen" not in m.flags:
                self._seen_below = m.uid
                return int(m.uid)
        self._seen_below = messages[-1].uid + 1 if messages else 0
        return None


@implementer(IMailbox)
class MboxMailbox:
    """One open mbox file (INBOX) with its index."""

    def __init__(self, store: MboxStore, key: tuple[str, str], mfile: MboxFile) -> None:
        self.name = key[1]
        self.uid_validity = 0
        self.uid_next = 1
        self.messages: list[MessageInfo] = []
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
            self.uid_validity = state.uid_validity
            self.uid_next = state.uid_next
            self.messages = self._visible(state.entries)
            self._tell(old, changes, fresh)
        return extra[0] if extra else changes

    def _tell(self, old: list[Any] | None, changes: Changes, fresh: bool = False) -> None:
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

    def _visible(self, entries: list[Any]) -> list[Any]:
        if not self._hidden:
            return entries
        hidden = self._hidden
        return [e for e in entries if e.uid not in hidden]

    @staticmethod
    def _untold(changes: Changes, told: set[int]) -> Changes:
        """``changes`` without what concerns messages whose EXPUNGE was already told."""
        return Changes(
            expunged=[u for u in changes.expunged if u not in told],
            added=[m for m in changes.added if m.uid not in told],
            flags={u: f for u, f in changes.flags.items() if u not in told},
        )

    def _entry(self, uid: int) -> ix.Entry | None:
        entries = self._state.entries if self._state is not None else []
        i = bisect_left(entries, uid, key=_UID)
        if i < len(entries) and entries[i].uid == uid and uid not in self._hidden:
            return entries[i]
        return None

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
        """A stat, on the reactor thread (metadata: microseconds), says the file is as the
        state knows it and no operation is running (a compaction may: it leaves the file as
        it is until its rename): a refresh has nothing to do."""
        if self._state is None or (self._lock.locked and not self._compacting):
            return False
        try:
            st = os.lstat(self._file.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return False
        if st is not None and (stat.S_ISLNK(st.st_mode) or st.st_uid != self._file.account.uid):
            return False  # the refresh, walking the path safely, says what is wrong
        return ix.Stamp.of(st) == self._state.stamp

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
        if reader is None or state is None or reader[1] != state.stamp.ino or length > FAST_READ_MAX:
            return None
        if not _RWF_NOWAIT:  # no way to read without blocking
            return None
        buf = bytearray(length)
        try:
            got = os.preadv(reader[0], [buf], entry.offset, _RWF_NOWAIT)
        except OSError:  # BlockingIOError (not cached), EOPNOTSUPP (no RWF_NOWAIT here)...
            return None
        if got != length:
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
                yield self.refresh()  # another program changed the file: look again
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
            entries = [e for e in map(self._entry, pending) if e is not None]
            found = yield self._store.blocking(self._file.read_many, entries, True)
            out.update((uid, data) for uid, data in found.items() if data is not None)
            pending = [uid for uid, data in found.items() if data is None]
            if not pending or attempt:
                break
            yield self.refresh()  # another program changed the file: look again
        return out

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
        if gone:
            old = self.messages
            self._hidden.update(gone)
            self.messages = self._visible(state.entries)
            self._tell(old, Changes(expunged=gone))
            self._compact()
        return defer.succeed(gone)

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

    def _compaction_failed(self, failure: Any, todo: list[int]) -> None:
        if failure.check(FileReplaced) and self._state is not None:
            # Another program put a new file in its place: the expunge is done as far as this
            # state goes (they leave it); what the new file has is found by the refresh, and a
            # message it still holds comes back as a new message, with a new UID.
            log.warn(  # noqa: G010 - twisted.logger.Logger has warn, not warning
                "{path} was replaced during its compaction: reading it again",
                path=self._file.path,
            )
            gone = set(todo)
            self._state = self._state.copy(
                entries=[e for e in self._state.entries if e.uid not in gone]
            )
            self._hidden.difference_update(gone)
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

    def _append(
        self, data: bytes, sender: str, flags: frozenset[str], when: datetime | None
    ) -> defer.Deferred[Any]:
        # APPEND's date keeps its zone; mail delivered here gets the local zone (as Dovecot)
        date = int((when or self._store.now()).timestamp())
        tz = None if when is None else ix.offset_of(when)
        return self._run(self._file.append, data, sender, frozenset(flags), date, tz)

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
            self._state = self._state.copy(stamp=ix.Stamp(0, 0, 0), entries=[])
        self.messages = []
        self._keep_reader(None)
        self._tell(old, Changes(expunged=[m.uid for m in old]))

    def close(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._keep_reader(None)
            if self._hidden:
                self._compact()  # an earlier one failed: try again before it is let go
            # forget it once its pending operations are done (a new open reads the saved index)
            self._lock.run(lambda: self._store._forget(self._key, self))


IDLE_BUDGET = 300_000  # messages of mailboxes nobody has open that stay in memory


@implementer(IMailStore)
class MboxStore:
    """All mailboxes of all accounts, as mbox files; see the module docstring.

    ``specials`` ({folder name: special-use flag}) defaults to
    ``mailbox_config.special_folders()`` (the ``[mailbox]`` keys) when the config has it.
    The file work runs through ``blocking`` (mailsuite.threads).
    """

    def __init__(
        self,
        mailbox_config: MailboxConfig,
        blocking: Blocking,
        now: Callable[[], datetime] | None = None,
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        specials: dict[str, str] | None = None,
    ) -> None:
        self._config = mailbox_config
        self.blocking = blocking
        self.now = now or (lambda: datetime.now(UTC))
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        if specials is None:
            get = getattr(mailbox_config, "special_folders", None)
            specials = get() if get is not None else folders.DEFAULT_SPECIALS
        self.specials = folders.check_specials(specials)
        self._boxes: dict[tuple[str, str], MboxMailbox] = {}
        self._idle: OrderedDict[tuple[str, str], MboxMailbox] = OrderedDict()
        self.idle_budget = IDLE_BUDGET
        self._folder_locks: dict[str, defer.DeferredLock] = {}

    def settle(self) -> defer.Deferred[None]:
        """Fires when every operation queued on a mailbox so far is done (the compactions of
        what was expunged among them): the server waits for this before it stops."""
        boxes = list(self._boxes.values())
        d = defer.DeferredList([box.settled() for box in boxes], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _tree(self, account: Account) -> FolderTree:
        return FolderTree(
            account,
            self._config.folder_root(account),
            self._config.inbox_path(account),
            self._lock_timeout,
            self._stale_after,
        )

    def _file(self, account: Account, name: str = INBOX, path: str | None = None) -> MboxFile:
        tree = self._tree(account)
        return MboxFile(
            account,
            path or tree.inbox_path,
            tree.root,
            now=lambda: self.now().timestamp(),
            lock_timeout=self._lock_timeout,
            stale_after=self._stale_after,
            index_dir=tree.index_dir(name),
            anchors=tree.anchors,
        )

    def _forget(self, key: tuple[str, str], box: MboxMailbox) -> None:
        """Nobody has ``box`` open any more: keep it a while (a later open costs a stat, not
        an index read), the least recently used going first beyond ``idle_budget`` messages."""
        if box.users > 0 or self._boxes.get(key) is not box:
            return
        self._idle[key] = box
        self._idle.move_to_end(key)
        total = sum(len(b.messages) for b in self._idle.values())
        while self._idle and total > self.idle_budget:
            old_key, old = self._idle.popitem(last=False)
            total -= len(old.messages)
            self._drop(old_key, old)

    def _drop(self, key: tuple[str, str], box: MboxMailbox) -> None:
        if box.users <= 0 and self._boxes.get(key) is box:
            del self._boxes[key]

    def _drop_idle(self, account: Account, affected: Callable[[str], bool]) -> None:
        """Forget the idle mailboxes of ``account`` that a folder operation may move or remove
        (``affected`` names them); every other kept mailbox stays (a LIST at each login must
        not cost the next SELECT an index read)."""
        for key in [k for k in self._idle if k[0] == account.name and affected(k[1])]:
            self._drop(key, self._idle.pop(key))

    def _folder_lock(self, account: Account) -> defer.DeferredLock:
        return self._folder_locks.setdefault(account.name, defer.DeferredLock())

    @defer.inlineCallbacks
    def open(self, account: Account, name: str = INBOX) -> Any:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            raise MailboxNotFound(str(e)) from e
        key = (account.name, name)
        self._idle.pop(key, None)
        box = self._boxes.get(key)
        if box is None:
            tree = self._tree(account)
            path = yield self._folder_lock(account).run(
                self.blocking, store_errors, tree.mbox_path, name
            )
            if path is None:
                raise MailboxNotFound(name)
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = MboxMailbox(self, key, self._file(account, name, path))
        box.users += 1
        try:
            yield box.refresh()
        except BaseException:
            box.close()
            raise
        return box

    def deliver_many(self, account: Account, items: list[tuple[bytes, str]]) -> defer.Deferred[None]:
        """Deliver several ``(data, sender)`` to one INBOX with one lock and one fsync (group
        commit, mta/delivery.py); through the open INBOX when a session has it."""
        box = self._boxes.get((account.name, INBOX))
        date = int(self.now().timestamp())
        if box is not None:
            d = box._run(box._file.append_many, list(items), date)
        else:
            d = self.blocking(self._file(account).append_many, None, list(items), date)
        return d.addCallback(lambda _: None)

    def deliver(self, account: Account, data: bytes, sender: str) -> defer.Deferred[None]:
        box = self._boxes.get((account.name, INBOX))
        if box is not None:
            d = box._append(data, sender, frozenset(), None)
        else:
            date = int(self.now().timestamp())
            d = self.blocking(self._file(account).append, None, data, sender, frozenset(), date)
        return d.addCallback(lambda _: None)

    # -- folders --------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _folder_op(
        self,
        account: Account,
        affected: Callable[[str], bool],
        work: Callable[[], Any],
        then: Callable[[Any], None] | None = None,
    ) -> Any:
        """Run ``work`` in a thread, alone among the account's folder operations and while no
        operation runs on an open mailbox ``affected`` names; ``then(result)`` on the reactor
        thread before those mailboxes are let go."""
        lock = self._folder_lock(account)
        yield lock.acquire()
        self._drop_idle(account, affected)
        held: list[MboxMailbox] = []
        try:
            for (user, name), box in sorted(self._boxes.items()):
                if user == account.name and affected(name):
                    yield box._lock.acquire()
                    held.append(box)
            result = yield self.blocking(store_errors, work)
            if then is not None:
                then(result)
            return result
        finally:
            for box in held:
                box._lock.release()
            lock.release()

    def _moved(self, account: Account, moves: dict[str, tuple[str, str, str]]) -> None:
        """Open mailboxes that moved on disk: {old name: (new name, mbox path, index dir)}."""
        for old, (new, path, index_dir) in moves.items():
            box = self._boxes.pop((account.name, old), None)
            if box is None:
                continue
            box.name = new
            box._key = (account.name, new)
            box._file.move(path, index_dir)
            self._boxes[box._key] = box

    def list_mailboxes(self, account: Account) -> defer.Deferred[list[MailboxEntry]]:
        tree = self._tree(account)

        def work() -> tuple[dict[str, bool], dict[str, str]]:
            try:
                return folders_and_specials()
            except StoreRefused as e:  # no home, a symlinked ~/mail: INBOX still works
                log.warn("{user}: only INBOX listed: {why}", user=account.name, why=e)
                return {INBOX: False}, {}

        def folders_and_specials() -> tuple[dict[str, bool], dict[str, str]]:
            moved: dict[str, str] = {}
            made = tree.specials_made()
            todo = [name for name in self.specials if name not in made]
            if todo:
                v2, subscribed = tree.read_subscriptions()
                for name in todo:
                    if not tree.exists(name):
                        moved.update(tree.create(name))
                    if name not in subscribed:
                        subscribed.append(name)
                tree.write_subscriptions(v2, subscribed)
                tree.record_specials(made | set(todo))
            return tree.list_folders(), moved

        def entries(result: tuple[dict[str, bool], dict[str, str]]) -> list[MailboxEntry]:
            found, _ = result
            return [
                MailboxEntry(name, found[name], self.specials.get(name))
                for name in folders.list_order(found)
            ]

        specials_parents = {p for name in self.specials for p in folders.parents(name)}
        d = self._folder_op(
            account,
            specials_parents.__contains__,
            work,
            lambda result: self._converted(account, tree, result[1]),
        )
        return d.addCallback(entries)

    def _converted(self, account: Account, tree: FolderTree, moved: dict[str, str]) -> None:
        self._moved(account, {n: (n, path, tree.index_dir(n)) for n, path in moved.items()})

    def create(self, account: Account, name: str) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        tree = self._tree(account)
        parents = set(folders.parents(name))
        d = self._folder_op(
            account,
            parents.__contains__,
            lambda: tree.create(name),
            lambda moved: self._converted(account, tree, moved),
        )
        return d.addCallback(lambda _: None)

    def delete(self, account: Account, name: str) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        if name == INBOX:
            return defer.fail(InvalidMailboxName("INBOX cannot be deleted"))
        tree = self._tree(account)

        def then(_: None) -> None:
            box = self._boxes.pop((account.name, name), None)
            if box is not None:
                box._gone()

        d = self._folder_op(account, name.__eq__, lambda: tree.delete(name), then)
        return d.addCallback(lambda _: None)

    def rename(self, account: Account, old: str, new: str) -> defer.Deferred[None]:
        try:
            old, new = folders.normalize(old), folders.normalize(new)
        except InvalidMailboxName as e:
            return defer.fail(e)
        if new == INBOX:
            return defer.fail(MailboxExists(INBOX))
        if folders.is_under(new, old) or new == old:
            return defer.fail(InvalidMailboxName(f"cannot rename {old!r} to {new!r}"))
        tree = self._tree(account)
        if old == INBOX:
            return self._rename_inbox(account, tree, new)
        parents = set(folders.parents(new))

        def affected(name: str) -> bool:
            return name == old or folders.is_under(name, old) or name in parents

        def work() -> dict[str, tuple[str, str, str]]:
            if not tree.exists(old):
                raise MailboxNotFound(old)
            moving = [n for n in self._open_names(account) if n == old or folders.is_under(n, old)]
            converted = tree.rename(old, new)
            moves = {n: (n, path, tree.index_dir(n)) for n, path in converted.items()}
            for name in moving:
                to = folders.renamed(name, old, new)
                moves[name] = (to, tree.mbox_path(to) or tree.folder_path(to), tree.index_dir(to))
            v2, subscribed = tree.read_subscriptions()
            renamed = [
                folders.renamed(s, old, new) if s == old or folders.is_under(s, old) else s
                for s in subscribed
            ]
            if renamed != subscribed:
                tree.write_subscriptions(v2, renamed)
            return moves

        d = self._folder_op(account, affected, work, lambda moves: self._moved(account, moves))
        return d.addCallback(lambda _: None)

    def _open_names(self, account: Account) -> list[str]:
        return [name for (user, name) in list(self._boxes) if user == account.name]

    @defer.inlineCallbacks
    def _rename_inbox(self, account: Account, tree: FolderTree, new: str) -> Any:
        """RFC 3501: INBOX's messages move into ``new``; INBOX stays, empty."""
        parents = set(folders.parents(new))

        def prepare() -> dict[str, str]:
            if tree.exists(new):
                raise MailboxExists(new)
            return tree.make_parents(new)

        lock = self._folder_lock(account)
        yield lock.acquire()
        self._drop_idle(account, lambda name: name in parents or name == new)
        try:
            yield self._folder_op_locked(account, parents, prepare, tree)
            target = self._file(account, new, tree.folder_path(new))
            box = self._boxes.get((account.name, INBOX))
            if box is not None:
                if box._hidden:
                    box._compact()  # what was expunged does not move (an earlier try failed)
                yield box._run(box._file.move_all, target)
            else:
                yield self.blocking(self._file(account).move_all, None, target)
        finally:
            lock.release()

    @defer.inlineCallbacks
    def _folder_op_locked(
        self,
        account: Account,
        names: set[str],
        work: Callable[[], dict[str, str]],
        tree: FolderTree,
    ) -> Any:
        held = []
        try:
            for (user, name), box in sorted(self._boxes.items()):
                if user == account.name and name in names:
                    yield box._lock.acquire()
                    held.append(box)
            moved = yield self.blocking(store_errors, work)
            self._converted(account, tree, moved)
        finally:
            for box in held:
                box._lock.release()

    def subscriptions(self, account: Account) -> defer.Deferred[set[str]]:
        tree = self._tree(account)
        d = self._folder_lock(account).run(self.blocking, store_errors, tree.read_subscriptions)
        return d.addCallback(lambda result: set(result[1]))

    def _subscription(self, account: Account, name: str, on: bool) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        tree = self._tree(account)

        def work() -> None:
            v2, subscribed = tree.read_subscriptions()
            if on and name not in subscribed:
                tree.write_subscriptions(v2, subscribed + [name])
            elif not on and name in subscribed:
                tree.write_subscriptions(v2, [s for s in subscribed if s != name])

        return self._folder_lock(account).run(self.blocking, store_errors, work)

    def subscribe(self, account: Account, name: str) -> defer.Deferred[None]:
        return self._subscription(account, name, True)

    def unsubscribe(self, account: Account, name: str) -> defer.Deferred[None]:
        return self._subscription(account, name, False)
