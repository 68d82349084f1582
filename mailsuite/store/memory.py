"""The in-memory mail store: the test double of the mbox store, with the same behaviour."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.store import events, folders
from mailsuite.store import modseq as ms
from mailsuite.store.folderattrs import FolderAttrs, check_use, new_mailbox_id
from mailsuite.store.interfaces import (
    SYSTEM_FLAGS,
    Changes,
    IMailbox,
    IMailStore,
    InvalidMailboxName,
    Listener,
    MailboxEntry,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    MessageInfo,
    StoreError,
    UnknownUID,
)
from mailsuite.store.headercache import pick
from mailsuite.store.mboxformat import fingerprint, header_end
from mailsuite.wire import wire_size


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


@implementer(IMailbox)
class MemoryMailbox:
    def __init__(self, name: str, uid_validity: int, now: Callable[[], datetime]) -> None:
        self.name = name
        self.uid_validity = uid_validity
        self.uid_next = 1
        self.messages: list[MessageInfo] = []
        self._bodies: dict[int, bytes] = {}
        self._listeners: list[Listener] = []
        self._pending = Changes()
        self._now = now
        self._keywords: set[str] = set()
        self.users = 0
        self.owner: tuple[Any, str] | None = None  # (store, account name)
        self._fingerprints: dict[int, str] = {}  # uid -> as the mbox index has it
        self.mailbox_id = new_mailbox_id()  # folderattrs.FolderAttrs, moved by RENAME
        self.special_use: str | None = None  # given at CREATE
        self.highest_modseq = 1
        self.vanished = ms.EMPTY

    # Changes are recorded as they happen and told to listeners on the next refresh, as the mbox
    # store sees them only when it looks at the disk; changes made through this object are told
    # at once.
    def refresh(self) -> defer.Deferred[Changes]:
        changes, self._pending = self._pending, Changes()
        self._tell(changes)
        return defer.succeed(changes)

    def _tell(self, changes: Changes) -> None:
        if changes:
            for listener in list(self._listeners):
                listener(changes)
            if self.owner is not None:
                events.mailbox_changed(*self.owner, self.name, changes)

    def read(self, uid: int) -> defer.Deferred[bytes]:
        if uid not in self._bodies:
            return defer.fail(UnknownUID(uid))
        return defer.succeed(self._bodies[uid])

    def read_headers(self, uids: list[int]) -> defer.Deferred[dict[int, bytes]]:
        out = {}
        for uid in uids:
            body = self._bodies.get(uid)
            if body is not None:
                out[uid] = body[: header_end(body, 0, len(body))]
        return defer.succeed(out)

    def header_fields(self, uids: list[int], names: list[bytes]
                      ) -> defer.Deferred[dict[int, bytes]]:
        wanted = frozenset(n.upper() for n in names)
        out = {}
        for uid in uids:
            body = self._bodies.get(uid)
            if body is not None:
                out[uid] = pick(body[: header_end(body, 0, len(body))], wanted)
        return defer.succeed(out)

    def cached_header_fields(self, uids: list[int], names: list[bytes]
                             ) -> defer.Deferred[tuple[frozenset[bytes], dict[int, bytes],
                                                       dict[int, int]]]:
        """Nothing: this store keeps no header cache (``header_fields`` reads the bodies)."""
        return defer.succeed((frozenset(), {}, {}))

    def set_flags(self, changes: dict[int, frozenset[str]]) -> defer.Deferred[None]:
        told = Changes()
        modseq = self.highest_modseq = self.highest_modseq + 1
        self.messages = [
            MessageInfo(m.uid, frozenset(changes[m.uid]), m.internal_date, m.size, modseq,
                        m.saved)
            if m.uid in changes
            else m
            for m in self.messages
        ]
        for uid, flags in changes.items():
            if uid in self._bodies:
                told.flags[uid] = frozenset(flags)
                self._keywords.update(flags - SYSTEM_FLAGS)
        self._tell(told)
        return defer.succeed(None)

    def change_flags(
        self,
        uids: list[int],
        add: frozenset[str] = frozenset(),
        remove: frozenset[str] = frozenset(),
        replace: frozenset[str] | None = None,
    ) -> defer.Deferred[dict[int, frozenset[str]]]:
        wanted = set(uids)
        result: dict[int, frozenset[str]] = {}
        changed: dict[int, frozenset[str]] = {}
        for m in self.messages:
            if m.uid in wanted:
                new = frozenset(replace) if replace is not None else (m.flags | add) - remove
                result[m.uid] = new
                if new != m.flags:
                    changed[m.uid] = new
        if changed:
            self.set_flags(changed)
        return defer.succeed(result)

    def expunge(self, uids: list[int]) -> defer.Deferred[list[int]]:
        gone = [m.uid for m in self.messages if m.uid in set(uids)]
        self.messages = [m for m in self.messages if m.uid not in set(gone)]
        for uid in gone:
            del self._bodies[uid]
            self._fingerprints.pop(uid, None)
        if gone:
            self.highest_modseq += 1
            self.vanished = self.vanished.add(gone, self.highest_modseq)
        self._tell(Changes(expunged=gone))
        return defer.succeed(gone)

    def _add(
        self, data: bytes, flags: frozenset[str], date: datetime | None, verbatim: bool = False,
        bump: bool = True,
    ) -> MessageInfo:
        """``bump``: a new modseq (not for the second message on of one MULTIAPPEND)."""
        if not verbatim:
            data = _lf(data)
            if not data.endswith(b"\n"):
                data += b"\n"
        # a date given keeps its zone; mail delivered here gets the local zone (as Dovecot)
        when = date or self._now().astimezone()
        self.highest_modseq += 1 if bump else 0
        info = MessageInfo(self.uid_next, frozenset(flags), when, wire_size(data),
                           self.highest_modseq, int(self._now().timestamp()))
        header = header_end(data, 0, len(data))
        self._fingerprints[info.uid] = fingerprint(data[:header], len(data) - header)
        self.uid_next += 1
        self.messages.append(info)
        self._bodies[info.uid] = data
        self._keywords.update(info.flags - SYSTEM_FLAGS)
        return info

    def append(
        self,
        data: bytes,
        flags: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
    ) -> defer.Deferred[int]:
        info = self._add(data, flags, internal_date)
        self._tell(Changes(added=[info]))
        return defer.succeed(info.uid)

    def email_id(self, uid: int) -> str | None:
        return self._fingerprints.get(uid)

    def append_messages(
        self, messages: list[tuple[bytes, frozenset[str], datetime | None]]
    ) -> defer.Deferred[list[int]]:
        """All of ``messages`` (data, flags, internal date or None) at once (MULTIAPPEND)."""
        # one change, one modseq for all of them (as the mbox store)
        infos = [self._add(data, flags, when, bump=not i)
                 for i, (data, flags, when) in enumerate(messages)]
        self._tell(Changes(added=infos))
        return defer.succeed([info.uid for info in infos])

    def changed_since(self, modseq: int) -> list[int] | None:
        return None  # not kept: the caller looks at every message

    def keywords(self) -> set[str]:
        return self._keywords

    def unseen_count(self) -> int:
        return sum(1 for m in self.messages if "\\Seen" not in m.flags)

    def first_unseen(self) -> int | None:
        return next((m.uid for m in self.messages if "\\Seen" not in m.flags), None)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        self.users -= 1

    # Test hook: what another program (Postfix local, mutt) writing to the file would do;
    # ``verbatim``: one that keeps the bytes as they are (CRLF line ends, no final newline).
    def external_append(self, data: bytes, verbatim: bool = False) -> None:
        info = self._add(data, frozenset(), None, verbatim)  # saved by another: no save date
        self.messages[-1] = info = dataclasses.replace(info, saved=0)
        self._pending.added.append(info)


def _deferred(f: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    """Run ``f`` now; its result or StoreError as a Deferred (the interface is asynchronous)."""

    def wrapper(*args: Any) -> defer.Deferred[Any]:
        try:
            return defer.succeed(f(*args))
        except StoreError as e:
            return defer.fail(e)

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


@implementer(IMailStore)
class MemoryStore:
    """Every mailbox in a dict; folders behave as in the mbox store (see IMailStore).

    ``specials`` maps folder names to special-use flags (default: Sent, Drafts, Trash, Junk, as
    the ``[mailbox]`` defaults); they are created and subscribed on an account's first
    list_mailboxes.
    """

    def __init__(
        self,
        now: Callable[[], datetime] | None = None,
        specials: dict[str, str] | None = None,
    ) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._boxes: dict[tuple[str, str], MemoryMailbox] = {}
        self._next_validity = 1700000000
        self.specials = folders.check_specials(
            folders.DEFAULT_SPECIALS if specials is None else specials
        )
        self._subscribed: dict[str, set[str]] = {}
        self._specials_made: set[str] = set()
        #: METADATA entries (store/metadata.py): {(user, mailbox or None for the server): ...}
        self.metadata: dict[tuple[str, str | None], dict[str, bytes]] = {}

    def _new_box(self, account: Account, name: str) -> MemoryMailbox:
        self._next_validity += 1
        box = self._boxes[(account.name, name)] = MemoryMailbox(
            name, self._next_validity, self._now
        )
        box.owner = (self, account.name)  # for NOTIFY's event bus (store/events.py)
        box.mailbox_id = f"F{self._next_validity:x}"  # unique in the store, the same each run
        return box

    def _box(self, account: Account, name: str, create: bool) -> MemoryMailbox:
        name = folders.normalize(name)
        key = (account.name, name)
        if key not in self._boxes:
            if not (create or name == folders.INBOX):
                raise MailboxNotFound(name)
            return self._new_box(account, name)
        return self._boxes[key]

    def _names(self, account: Account) -> set[str]:
        return {name for (user, name) in self._boxes if user == account.name} | {folders.INBOX}

    def open(self, account: Account, name: str = "INBOX") -> defer.Deferred[MemoryMailbox]:
        try:
            box = self._box(account, name, create=False)
        except StoreError as e:
            return defer.fail(e)
        box.users += 1
        return defer.succeed(box)

    def deliver(self, account: Account, data: bytes, sender: str) -> defer.Deferred[None]:
        return self.deliver_many(account, [(data, sender)])

    def deliver_many(
        self, account: Account, items: list[tuple[bytes, str]]
    ) -> defer.Deferred[None]:
        """One change told for the whole batch, as the mbox store's one write gives."""
        box = self._box(account, "INBOX", create=True)
        added = [box._add(data, frozenset(), None) for data, _ in items]
        box._tell(Changes(added=added))
        return defer.succeed(None)

    def settle(self) -> defer.Deferred[None]:
        return defer.succeed(None)  # nothing is ever left running

    # -- folders --------------------------------------------------------------------------------

    @_deferred
    def list_mailboxes(self, account: Account) -> list[MailboxEntry]:
        if account.name not in self._specials_made:
            self._specials_made.add(account.name)
            subs = self._subscribed.setdefault(account.name, set())
            for name in self.specials:
                if (account.name, name) not in self._boxes:
                    self._create(account, name)
                    subs.add(name)
        names = self._names(account)
        return [
            MailboxEntry(
                name,
                any(folders.is_under(other, name) for other in names),
                self._box(account, name, create=True).special_use or self.specials.get(name),
            )
            for name in folders.list_order(names)
        ]

    @_deferred
    def folder_attrs(self, account: Account, name: str, use: str | None = None) -> FolderAttrs:
        """As ``folderattrs.FolderAttrsStore.folder_attrs``."""
        box = self._box(account, name, create=False)
        if use is not None:
            box.special_use = check_use(use)
        return FolderAttrs(box.mailbox_id, box.special_use)

    def _create(self, account: Account, name: str) -> None:
        name = folders.normalize(name)
        names = self._names(account)
        if name in names:
            raise MailboxExists(name)
        for parent in folders.parents(name):
            if parent not in names:
                self._new_box(account, parent)
        self._new_box(account, name)

    @_deferred
    def create(self, account: Account, name: str) -> None:
        self._create(account, name)

    @_deferred
    def delete(self, account: Account, name: str) -> None:
        name = folders.normalize(name)
        if name == folders.INBOX:
            raise InvalidMailboxName("INBOX cannot be deleted")
        names = self._names(account)
        if name not in names:
            raise MailboxNotFound(name)
        if any(folders.is_under(other, name) for other in names):
            raise MailboxHasChildren(name)
        box = self._boxes.pop((account.name, name))
        self.metadata.pop((account.name, name), None)  # store/metadata.py: gone with it
        gone = [m.uid for m in box.messages]
        box.messages, box._bodies = [], {}
        box._tell(Changes(expunged=gone))

    @_deferred
    def rename(self, account: Account, old: str, new: str) -> None:
        old, new = folders.normalize(old), folders.normalize(new)
        names = self._names(account)
        if old not in names:
            raise MailboxNotFound(old)
        if new in names:
            raise MailboxExists(new)
        if new == folders.INBOX or folders.is_under(new, old):
            raise InvalidMailboxName(f"cannot rename {old!r} to {new!r}")
        for parent in folders.parents(new):
            if parent not in names:
                self._new_box(account, parent)
        if old == folders.INBOX:
            inbox = self._box(account, old, create=True)
            target = self._new_box(account, new)
            for info in inbox.messages:
                target._add(inbox._bodies[info.uid], info.flags, info.internal_date, True)
            gone = [m.uid for m in inbox.messages]
            inbox.messages, inbox._bodies = [], {}
            inbox.highest_modseq += 1
            inbox.vanished = inbox.vanished.add(gone, inbox.highest_modseq)
            inbox._tell(Changes(expunged=gone))
            return
        moving = [n for n in names if n == old or folders.is_under(n, old)]
        for name in moving:
            box = self._boxes.pop((account.name, name))
            box.name = folders.renamed(name, old, new)
            self._boxes[(account.name, box.name)] = box
            if (account.name, name) in self.metadata:  # store/metadata.py: moved with it
                self.metadata[(account.name, box.name)] = self.metadata.pop((account.name, name))
        subs = self._subscribed.get(account.name, set())
        for name in [s for s in subs if s == old or folders.is_under(s, old)]:
            subs.discard(name)
            subs.add(folders.renamed(name, old, new))

    @_deferred
    def subscriptions(self, account: Account) -> set[str]:
        return set(self._subscribed.get(account.name, set()))

    @_deferred
    def subscribe(self, account: Account, name: str) -> None:
        self._subscribed.setdefault(account.name, set()).add(folders.normalize(name))

    @_deferred
    def unsubscribe(self, account: Account, name: str) -> None:
        self._subscribed.setdefault(account.name, set()).discard(folders.normalize(name))
