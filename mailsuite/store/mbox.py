"""The mbox mail store: IMailStore on the files Postfix local(8), mutt and Dovecot share.

INBOX is ``mailbox_config.inbox_path(account)`` (e.g. ``/var/mail/boss``); its index lives in
``folder_root(account)/.imap/INBOX/mailsuite.index`` (see ``index``). Only INBOX exists for now:
folders come with the IMAP folder work.

One ``MboxMailbox`` per file is shared by every session that has it open (counted by open and
close). A per-mailbox DeferredLock runs its operations one at a time; each runs its file work in
a thread (``mboxfile``) and the new state is published, and listeners told, on the reactor thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet import defer
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store.interfaces import (
    Changes,
    IMailbox,
    IMailStore,
    Listener,
    MailboxNotFound,
    MessageInfo,
    StoreError,
    UnknownUID,
)
from mailsuite.store.locking import DEFAULT_STALE_AFTER
from mailsuite.store.mboxfile import MboxFile
from mailsuite.threads import blocking


class MailboxConfig(Protocol):
    def inbox_path(self, account: Account) -> str: ...

    def folder_root(self, account: Account) -> str: ...


@implementer(IMailbox)
class MboxMailbox:
    """One open mbox file (INBOX) with its index."""

    def __init__(self, store: MboxStore, key: str, mfile: MboxFile) -> None:
        self.name = "INBOX"
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

    # -- running operations ---------------------------------------------------------------------

    def _run(self, operation: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``operation(state, *args)`` in a thread, alone; publish its (state, changes, ...)."""

        def start() -> defer.Deferred[Any]:
            first = self._state is None

            def work() -> tuple[Any, ...]:
                result = operation(self._state, *args)
                state = result[0]
                infos = [e.info() for e in state.entries] if first and state is not None else None
                return result, infos

            return blocking(work).addCallback(self._publish)

        return self._lock.run(start)

    def _publish(self, outcome: tuple[tuple[Any, ...], list[MessageInfo] | None]) -> Any:
        (state, changes, *extra), infos = outcome
        if state is not None:
            self._state = state
            self.uid_validity = state.uid_validity
            self.uid_next = state.uid_next
            if infos is not None:
                self.messages = infos
            else:
                self._apply(changes)
        for listener in list(self._listeners) if changes else ():
            listener(changes)
        return extra[0] if extra else changes

    def _apply(self, changes: Changes) -> None:
        messages = self.messages
        if changes.expunged:
            gone = set(changes.expunged)
            messages = [m for m in messages if m.uid not in gone]
        for uid, flags in changes.flags.items():
            i = bisect_left(messages, uid, key=lambda m: m.uid)
            if i < len(messages) and messages[i].uid == uid:
                m = messages[i]
                messages[i] = MessageInfo(uid, flags, m.internal_date, m.size)
        self.messages = messages + changes.added

    def _entry(self, uid: int) -> ix.Entry | None:
        entries = self._state.entries if self._state is not None else []
        i = bisect_left(entries, uid, key=lambda e: e.uid)
        return entries[i] if i < len(entries) and entries[i].uid == uid else None

    # -- IMailbox -------------------------------------------------------------------------------

    def refresh(self) -> defer.Deferred[Changes]:
        return self._run(self._file.refresh)

    @defer.inlineCallbacks
    def read(self, uid: int) -> Any:
        for attempt in range(2):
            entry = self._entry(uid)
            if entry is None:
                raise UnknownUID(uid)
            data = yield blocking(self._file.read, entry)
            if data is not None:
                return data
            if attempt == 0:
                yield self.refresh()  # another program changed the file: look again
        raise StoreError(f"message {uid} keeps moving in {self._file.path}")

    @defer.inlineCallbacks
    def read_headers(self, uids: list[int]) -> Any:
        out: dict[int, bytes] = {}
        pending = list(uids)
        for attempt in range(2):
            entries = [e for e in map(self._entry, pending) if e is not None]
            found = yield blocking(self._file.read_many, entries, True)
            out.update((uid, data) for uid, data in found.items() if data is not None)
            pending = [uid for uid, data in found.items() if data is None]
            if not pending or attempt:
                break
            yield self.refresh()  # another program changed the file: look again
        return out

    def set_flags(self, changes: dict[int, frozenset[str]]) -> defer.Deferred[None]:
        return self._run(self._file.set_flags, dict(changes)).addCallback(lambda _: None)

    def expunge(self, uids: list[int]) -> defer.Deferred[list[int]]:
        return self._run(self._file.expunge, list(uids))

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
        date = int((when or self._store.now()).timestamp())
        return self._run(self._file.append, data, sender, frozenset(flags), date)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        self.users -= 1
        if self.users <= 0:
            # forget it once its pending operations are done (a new open reads the saved index)
            self._lock.run(lambda: self._store._forget(self._key, self))


@implementer(IMailStore)
class MboxStore:
    """All INBOXes, as mbox files; see the module docstring."""

    def __init__(
        self,
        mailbox_config: MailboxConfig,
        now: Callable[[], datetime] | None = None,
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self._config = mailbox_config
        self.now = now or (lambda: datetime.now(UTC))
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        self._boxes: dict[str, MboxMailbox] = {}
        self._delivery_files: dict[Account, MboxFile] = {}

    def _file(self, account: Account) -> MboxFile:
        return MboxFile(
            account,
            self._config.inbox_path(account),
            self._config.folder_root(account),
            now=lambda: self.now().timestamp(),
            lock_timeout=self._lock_timeout,
            stale_after=self._stale_after,
        )

    def _forget(self, key: str, box: MboxMailbox) -> None:
        if box.users <= 0 and self._boxes.get(key) is box:
            del self._boxes[key]

    def open(self, account: Account, name: str = "INBOX") -> defer.Deferred[MboxMailbox]:
        if name.upper() != "INBOX":
            return defer.fail(MailboxNotFound(name))
        mfile = self._file(account)
        box = self._boxes.get(mfile.path)
        if box is None:
            box = self._boxes[mfile.path] = MboxMailbox(self, mfile.path, mfile)
        box.users += 1

        def failed(f: Any) -> Any:
            box.close()
            return f

        return box.refresh().addCallbacks(lambda _: box, failed)

    def deliver_many(self, account: Account, items: list[tuple[bytes, str]]) -> defer.Deferred[None]:
        """Deliver several ``(data, sender)`` to one INBOX with one lock and one fsync."""
        mfile = self._delivery_files.get(account)
        if mfile is None:  # MboxFile() resolves real paths: once per account, not per message
            if len(self._delivery_files) > 10000:
                self._delivery_files.clear()
            mfile = self._delivery_files[account] = self._file(account)
        box = self._boxes.get(mfile.path)
        date = int(self.now().timestamp())
        if box is not None:
            d = box._run(box._file.append_many, list(items), date)
        else:
            d = blocking(mfile.append_many, None, list(items), date)
        return d.addCallback(lambda _: None)

    def deliver(self, account: Account, data: bytes, sender: str) -> defer.Deferred[None]:
        mfile = self._file(account)
        box = self._boxes.get(mfile.path)
        if box is not None:
            d = box._append(data, sender, frozenset(), None)
        else:
            date = int(self.now().timestamp())
            d = blocking(mfile.append, None, data, sender, frozenset(), date)
        return d.addCallback(lambda _: None)
