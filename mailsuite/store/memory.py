"""The in-memory mail store: the test double of the mbox store, with the same behaviour."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.store.interfaces import (
    Changes,
    IMailbox,
    IMailStore,
    Listener,
    MailboxNotFound,
    MessageInfo,
    UnknownUID,
)
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
        self.users = 0

    # Changes are recorded as they happen and told to listeners on the next refresh, as the mbox
    # store sees them only when it looks at the disk; changes made through this object are told
    # at once.
    def refresh(self) -> "defer.Deferred[Changes]":
        changes, self._pending = self._pending, Changes()
        self._tell(changes)
        return defer.succeed(changes)

    def _tell(self, changes: Changes) -> None:
        if changes:
            for listener in list(self._listeners):
                listener(changes)

    def _info(self, uid: int) -> MessageInfo:
        for info in self.messages:
            if info.uid == uid:
                return info
        raise UnknownUID(uid)

    def read(self, uid: int) -> "defer.Deferred[bytes]":
        if uid not in self._bodies:
            return defer.fail(UnknownUID(uid))
        return defer.succeed(self._bodies[uid])

    def read_headers(self, uids: list[int]) -> "defer.Deferred[dict[int, bytes]]":
        out = {}
        for uid in uids:
            body = self._bodies.get(uid)
            if body is not None:
                end = body.find(b"\n\n")
                out[uid] = body if end < 0 else body[: end + 2]
        return defer.succeed(out)

    def set_flags(self, changes: dict[int, frozenset[str]]) -> "defer.Deferred[None]":
        told = Changes()
        self.messages = [
            MessageInfo(m.uid, frozenset(changes[m.uid]), m.internal_date, m.size)
            if m.uid in changes
            else m
            for m in self.messages
        ]
        for uid, flags in changes.items():
            if uid in self._bodies:
                told.flags[uid] = frozenset(flags)
        self._tell(told)
        return defer.succeed(None)

    def expunge(self, uids: list[int]) -> "defer.Deferred[list[int]]":
        gone = [m.uid for m in self.messages if m.uid in set(uids)]
        self.messages = [m for m in self.messages if m.uid not in set(gone)]
        for uid in gone:
            del self._bodies[uid]
        self._tell(Changes(expunged=gone))
        return defer.succeed(gone)

    def _add(
        self, data: bytes, flags: frozenset[str], date: datetime | None, verbatim: bool = False
    ) -> MessageInfo:
        if not verbatim:
            data = _lf(data)
            if not data.endswith(b"\n"):
                data += b"\n"
        info = MessageInfo(self.uid_next, frozenset(flags), date or self._now(), wire_size(data))
        self.uid_next += 1
        self.messages.append(info)
        self._bodies[info.uid] = data
        return info

    def append(
        self, data: bytes, flags: frozenset[str] = frozenset(), internal_date: datetime | None = None
    ) -> "defer.Deferred[int]":
        info = self._add(data, flags, internal_date)
        self._tell(Changes(added=[info]))
        return defer.succeed(info.uid)

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
        self._pending.added.append(self._add(data, frozenset(), None, verbatim))


@implementer(IMailStore)
class MemoryStore:
    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._boxes: dict[tuple[str, str], MemoryMailbox] = {}
        self._next_validity = 1700000000

    def _box(self, account: Account, name: str, create: bool) -> MemoryMailbox:
        name = "INBOX" if name.upper() == "INBOX" else name
        key = (account.name, name)
        if key not in self._boxes:
            if not create:
                raise MailboxNotFound(name)
            self._next_validity += 1
            self._boxes[key] = MemoryMailbox(name, self._next_validity, self._now)
        return self._boxes[key]

    def open(self, account: Account, name: str = "INBOX") -> "defer.Deferred[MemoryMailbox]":
        try:
            box = self._box(account, name, create=name.upper() == "INBOX")
        except MailboxNotFound as e:
            return defer.fail(e)
        box.users += 1
        return defer.succeed(box)

    def deliver(self, account: Account, data: bytes, sender: str) -> "defer.Deferred[None]":
        box = self._box(account, "INBOX", create=True)
        info = box._add(data, frozenset(), None)
        box._tell(Changes(added=[info]))
        return defer.succeed(None)
