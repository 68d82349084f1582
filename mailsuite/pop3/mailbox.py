"""The maildrop of one POP3 session: a snapshot of INBOX taken at login, deletion marks, and the
expunge of exactly the marked UIDs at QUIT (``open_pop3_mailbox``; the realm hands it to
``mailsuite.pop3.server``)."""

from __future__ import annotations

import functools
import io
from collections.abc import Generator, Iterator, Sequence
from itertools import islice
from typing import Any

from twisted.internet import defer
from twisted.mail import pop3
from zope.interface import implementer

from mailsuite import uidlformat
from mailsuite.accounts import Account
from mailsuite.store.interfaces import IMailbox, IMailStore, MessageInfo
from mailsuite.wire import to_wire


class Snapshot(Sequence[Any]):
    """The first ``count`` entries of a store's ``messages`` list, taken in O(1): a published
    list only ever grows at its end (``IMailbox.messages``), so its head stays as it was. A
    copy would cost O(n) per login (100,000 messages)."""

    def __init__(self, messages: Sequence[Any], count: int | None = None) -> None:
        self._messages = messages
        self._count = len(messages) if count is None else count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._messages[index]

    def __iter__(self) -> Iterator[Any]:
        return islice(self._messages, self._count)


class _Sizes(Sequence[int]):
    """The wire sizes of a snapshot's messages, read from it when asked."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def __len__(self) -> int:
        return len(self._snapshot)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [m.size for m in self._snapshot[index]]
        return self._snapshot[index].size

    def __iter__(self) -> Iterator[int]:
        return (m.size for m in self._snapshot)


@implementer(pop3.IMailbox)
class Pop3Mailbox:
    """The maildrop of one POP3 session: a snapshot of INBOX, deletion marks, the commit at QUIT.

    Indexes are 0-based (message number - 1), as ``twisted.mail.pop3.IMailbox`` wants.
    ``sizes`` are the wire sizes of the snapshot's messages (deleted ones too), from the store.
    """

    def __init__(
        self, mailbox: IMailbox, account: Account, snapshot: Sequence[MessageInfo]
    ) -> None:
        self.mailbox = mailbox
        self.account = account
        self.messages = snapshot if isinstance(snapshot, Snapshot) else Snapshot(list(snapshot))
        self.sizes: Sequence[int] = _Sizes(self.messages)
        self.deleted: set[int] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self.messages)

    def check_index(self, index: int) -> None:
        """ValueError unless ``index`` names a message of the snapshot that is not deleted."""
        if not 0 <= index < len(self.messages):
            raise ValueError(f"There's no message {index + 1}.")
        if index in self.deleted:
            raise ValueError("Message is deleted.")

    def read_wire(self, index: int) -> defer.Deferred[bytes]:
        """Deferred[bytes]: the wire form of a message (ValueError if deleted or unknown)."""
        try:
            self.check_index(index)
        except ValueError as e:
            return defer.fail(e)
        return self.mailbox.read(self.messages[index].uid).addCallback(to_wire)

    def uidl(self, index: int, template: str = uidlformat.DEFAULT) -> str:
        """The UIDL in Dovecot's ``pop3_uidl_format`` (default ``%08Xu%08Xv``): stable for as
        long as UIDVALIDITY and the UID are."""
        return compiled(template).format(self.messages[index].uid, int(self.mailbox.uid_validity))

    def commit(self) -> defer.Deferred[list[int]]:
        """Expunge the messages marked deleted; fires with the UIDs removed."""
        uids = sorted(self.messages[i].uid for i in self.deleted)
        if not uids:
            return defer.succeed([])
        return self.mailbox.expunge(uids)

    def logout(self) -> None:
        """The session is over: close the mailbox (once)."""
        if not self._closed:
            self._closed = True
            self.mailbox.close()

    # twisted.mail.pop3.IMailbox
    def listMessages(self, i: int | None = None) -> Any:
        shown = [0 if n in self.deleted else s for n, s in enumerate(self.sizes)]
        if i is None:
            return shown
        if not 0 <= i < len(shown):
            raise ValueError(f"There's no message {i + 1}.")
        return shown[i]

    def getMessage(self, i: int) -> defer.Deferred[io.BytesIO]:
        return self.read_wire(i).addCallback(io.BytesIO)

    def getUidl(self, i: int) -> bytes:
        self.check_index(i)
        return self.uidl(i).encode("ascii")

    def deleteMessage(self, i: int) -> None:
        self.check_index(i)
        self.deleted.add(i)

    def undeleteMessages(self) -> None:
        self.deleted.clear()

    def sync(self) -> defer.Deferred[list[int]]:
        return self.commit()


@defer.inlineCallbacks
def open_pop3_mailbox(
    store: IMailStore, account: Account
) -> Generator[defer.Deferred[Any], Any, Pop3Mailbox]:
    """Deferred[Pop3Mailbox]: INBOX of ``account``, refreshed, as this session's maildrop."""
    mailbox = yield store.open(account, "INBOX")
    try:
        yield mailbox.refresh()
    except BaseException:
        mailbox.close()
        raise
    return Pop3Mailbox(mailbox, account, Snapshot(mailbox.messages))


@functools.lru_cache(maxsize=16)
def compiled(template: str) -> uidlformat.UidlFormat:
    return uidlformat.UidlFormat(template)
