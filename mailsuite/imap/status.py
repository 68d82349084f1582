"""STATUS (RFC 3501 6.3.10, RFC 9051 6.3.11) and the STATUS items, also for LIST-STATUS.

An item is one entry of ``STATUS_ITEMS``: its name -> a function of the ``StatusFacts`` of one
opened, refreshed mailbox that gives the value as it goes on the wire (``b"12"``, ``b"(F1)"``),
or an awaitable of it. An extension adds an item with one line, in its own module::

    STATUS_ITEMS["HIGHESTMODSEQ"] = lambda facts: b"%d" % facts.mailbox.highest_modseq

``status_values`` is what STATUS and ``LIST ... RETURN (STATUS (...))`` (listext.py) both call.
SIZE (RFC 8438) is the sum of the RFC822.SIZE of the messages; DELETED and DELETED-STORAGE are
RFC 9208's (quota.py advertises them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from inspect import isawaitable
from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor, ParseError, encode_mailbox
from mailsuite.store import entrytable as et
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object


@dataclass
class StatusFacts:
    """One mailbox, open and refreshed, as the STATUS item functions see it."""

    session: Any  # the session.Session asking
    name: str  # the mailbox name (decoded, '/' separator)
    mailbox: Any  # the store's IMailbox

    @property
    def messages(self) -> Any:
        return self.mailbox.messages

    def recent(self) -> int:
        s = self.session
        return int(s.recent.unclaimed(s.account.store, s.account.account, self.mailbox))


def _deleted(facts: StatusFacts) -> list[int]:
    return et.deleted_sizes(facts.messages)


StatusItem = Callable[[StatusFacts], "bytes | Awaitable[bytes]"]

#: item name (upper case) -> its value; see the module docstring
STATUS_ITEMS: dict[str, StatusItem] = {
    "MESSAGES": lambda f: b"%d" % len(f.messages),
    "RECENT": lambda f: b"%d" % f.recent(),
    "UIDNEXT": lambda f: b"%d" % int(f.mailbox.uid_next),
    "UIDVALIDITY": lambda f: b"%d" % int(f.mailbox.uid_validity),
    "UNSEEN": lambda f: b"%d" % int(f.mailbox.unseen_count()),
    "SIZE": lambda f: b"%d" % sum(et.sizes_of(f.messages)),  # RFC 8438
    "DELETED": lambda f: b"%d" % len(_deleted(f)),  # RFC 9208 4.2
    "DELETED-STORAGE": lambda f: b"%d" % ((sum(_deleted(f)) + 1023) // 1024),  # in KiB
}


def parse_items(items: list[Any]) -> list[str]:
    """The STATUS item names of a parsed ``(...)`` list; ParseError (BAD) if one is unknown,
    nested or the list is empty."""
    names = []
    for item in items:
        if isinstance(item, list):
            raise ParseError("unknown STATUS item")
        name = bytes(item).upper().decode("ascii", "replace")
        if name not in STATUS_ITEMS:
            raise ParseError("unknown STATUS item " + name)
        names.append(name)
    if not names:
        raise ParseError("missing STATUS items")
    return names


async def status_values(session: Any, name: str, items: list[str]) -> bytes:
    """``(ITEM value ...)`` of mailbox ``name`` in the order asked; store errors propagate
    (MailboxNotFound...)."""
    account = session.account
    mailbox = await account.store.open(account.account, name)
    try:
        await mailbox.refresh()
        session.recent.touch(account.store, account.account, mailbox)
        facts = StatusFacts(session, name, mailbox)
        values = []
        for item in items:
            value = STATUS_ITEMS[item](facts)
            if isawaitable(value):
                value = await value
            values.append(item.encode("ascii") + b" " + bytes(value))  # type: ignore[arg-type]
        return b"(" + b" ".join(values) + b")"
    finally:
        mailbox.close()


def status_line(name: str, values: bytes, utf8: bool = False) -> bytes:
    return b"STATUS " + encode_mailbox(name, utf8) + b" " + values


class StatusCommands(_Base):
    """STATUS, for ``IMAPServer`` (what it uses of it: ``Session``)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"STATUS=SIZE": None}

    @states("auth", "select")
    async def cmd_STATUS(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        args.sp()
        items = parse_items(args.paren_list())
        args.end()
        values = await status_values(self, name, items)
        self.sendUntaggedResponse(status_line(name, values, self.utf8_names))
        self.sendPositiveResponse(tag, b"Status completed.")


__all__ = ["STATUS_ITEMS", "StatusCommands", "StatusFacts", "parse_items", "status_values"]
