"""Mailbox-level IMAP commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE,
LIST/LSUB/XLIST (with RFC 5258 selection and RETURN options for SPECIAL-USE, CHILDREN,
SUBSCRIBED), and STATUS (APPEND: ``append.AppendCommands``).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``):
``self.account`` is the ``ImapAccount``; store errors become tagged NO replies in
``IMAPServer._failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsuite.imap.listmatch import ListMatcher, PatternTooLong, full_pattern
from mailsuite.imap.parser import (
    DELIMITER,
    Cursor,
    ParseError,
    encode_mailbox,
    mailbox_name,
    modified_utf7,
)
from mailsuite.store.interfaces import MailboxEntry, MailboxNotFound

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                 "SIZE", "DELETED", "DELETED-STORAGE",  # RFC 8438, RFC 9208 4.2
                 "HIGHESTMODSEQ")  # RFC 7162


class FolderCommands(_Base):
    # -- SELECT / EXAMINE --------------------------------------------------------------------
    async def cmd_SELECT(self, tag: bytes, args: Cursor, readonly: bool = False) -> None:
        args.sp()
        name = args.mailbox()
        params = args.paren_list() if args.maybe_sp() and args.peek() == b"(" else []
        args.end()
        told = self.select_parameters(params)  # CONDSTORE: condstore.py
        self._close_view()
        try:
            view = await self.account.open_view(name, readonly, self.recent)
        except MailboxNotFound:
            self.sendNegativeResponse(
                tag, b"[NONEXISTENT] Mailbox doesn't exist: " + encode_mailbox(name)
            )
            return
        if self._lost:
            self.account.close_view(view)
            return
        for line in view.flags_responses():
            self.sendUntaggedResponse(line)
        self.sendUntaggedResponse(b"%d EXISTS" % view.count())
        self.sendUntaggedResponse(b"%d RECENT" % view.recent_count())
        unseen = view.first_unseen()
        if unseen is not None:
            self.sendUntaggedResponse(b"OK [UNSEEN %d] First unseen." % unseen)
        self.sendUntaggedResponse(b"OK [UIDVALIDITY %d] UIDs valid" % view.uid_validity)
        self.sendUntaggedResponse(b"OK [UIDNEXT %d] Predicted next UID" % view.uid_next)
        told(view)
        self.view, self.state = view, "select"
        mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
        self.sendPositiveResponse(
            tag, mode + (b" Examine" if readonly else b" Select") + b" completed."
        )

    cmd_SELECT.imap_states = ("auth", "select")  # type: ignore[attr-defined]

    async def cmd_EXAMINE(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_SELECT(tag, args, readonly=True)

    cmd_EXAMINE.imap_states = ("auth", "select")  # type: ignore[attr-defined]

    # -- CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE ----------------------------------------
    def _one_name(self, args: Cursor) -> str:
        args.sp()
        name = args.mailbox()
        args.end()
        return name

    async def cmd_CREATE(self, tag: bytes, args: Cursor) -> None:
        name = self._one_name(args).rstrip(DELIMITER)  # "a/" means "a, to hold children"
        await self.account.create(name)
        self.sendPositiveResponse(tag, b"Create completed.")

    async def cmd_DELETE(self, tag: bytes, args: Cursor) -> None:
        await self.account.delete(self._one_name(args))
        self.sendPositiveResponse(tag, b"Delete completed.")

    async def cmd_RENAME(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        old = args.mailbox()
        args.sp()
        new = args.mailbox().rstrip(DELIMITER)
        args.end()
        await self.account.rename(old, new)
        self.sendPositiveResponse(tag, b"Rename completed.")

    async def cmd_SUBSCRIBE(self, tag: bytes, args: Cursor) -> None:
        await self.account.subscribe(self._one_name(args))
        self.sendPositiveResponse(tag, b"Subscribe completed.")

    async def cmd_UNSUBSCRIBE(self, tag: bytes, args: Cursor) -> None:
        await self.account.unsubscribe(self._one_name(args))
        self.sendPositiveResponse(tag, b"Unsubscribe completed.")

    for _f in (cmd_CREATE, cmd_DELETE, cmd_RENAME, cmd_SUBSCRIBE, cmd_UNSUBSCRIBE):
        _f.imap_states = ("auth", "select")  # type: ignore[attr-defined]

    # -- LIST LSUB XLIST ----------------------------------------------------------------------
    async def cmd_LIST(self, tag: bytes, args: Cursor, command: bytes = b"LIST") -> None:
        args.sp()
        selection: set[str] = set()
        if command == b"LIST" and args.peek() == b"(":
            selection = {bytes(o).decode("ascii", "replace").upper() for o in args.paren_list()
                         if not isinstance(o, list)}
            args.sp()
        ref = mailbox_name(args.astring())
        args.sp()
        if args.peek() == b"(" and command == b"LIST":
            patterns = [bytes(p) for p in args.paren_list() if not isinstance(p, list)]
        else:
            patterns = [args.list_mailbox()]
        returns: set[str] = set()
        if command == b"LIST" and args.maybe_sp():
            if args.atom().upper() != b"RETURN":
                raise ParseError("expected RETURN")
            args.sp()
            returns = {bytes(o).decode("ascii", "replace").upper() for o in args.paren_list()
                       if not isinstance(o, list)}
        args.end()
        unknown = selection - {"SUBSCRIBED", "SPECIAL-USE", "REMOTE", "RECURSIVEMATCH"}
        if unknown or (
            "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}
        ):
            raise ParseError("unsupported LIST selection option")
        if command == b"LIST" and patterns == [b""]:
            self.sendUntaggedResponse(b'LIST (\\Noselect) "/" ""')
            self.sendPositiveResponse(tag, b"List completed.")
            return
        try:
            matcher = ListMatcher(full_pattern(ref, mailbox_name(p) if p else "") for p in patterns)
        except PatternTooLong as e:
            self.sendNegativeResponse(tag, b"[LIMIT] " + str(e).encode("ascii"))
            return
        entries = await self.account.list_mailboxes()
        subscribed: set[str] = set()
        if command == b"LSUB" or "SUBSCRIBED" in selection or "SUBSCRIBED" in returns:
            subscribed = {
                mailbox_name(modified_utf7(n)) for n in await self.account.subscriptions()
            }
            subscribed.add("INBOX")  # always subscribed, as Outlook expects it in LSUB
        if command == b"LSUB":
            self._lsub(entries, subscribed, matcher, patterns)
        else:
            self._list(command, entries, subscribed, matcher, selection, returns)
        self.sendPositiveResponse(tag, command.capitalize() + b" completed.")

    def _list(self, command: bytes, entries: list[MailboxEntry], subscribed: set[str],
              matcher: ListMatcher, selection: set[str], returns: set[str]) -> None:
        existing = {e.name for e in entries}
        shown: list[tuple[str, list[str]]] = []
        for entry in entries:
            if not matcher.match(entry.name):
                continue
            if "SPECIAL-USE" in selection and not entry.special_use:
                continue
            if "SUBSCRIBED" in selection and entry.name not in subscribed:
                continue
            attrs = ["\\HasChildren" if entry.has_children else "\\HasNoChildren"]
            if entry.name in subscribed and ("SUBSCRIBED" in selection or "SUBSCRIBED" in returns):
                attrs.append("\\Subscribed")
            if entry.special_use:
                attrs.append(entry.special_use)
                if command == b"XLIST" and entry.special_use == "\\Junk":
                    attrs.append("\\Spam")
            if command == b"XLIST" and entry.name == "INBOX":
                attrs.append("\\Inbox")
            shown.append((entry.name, attrs))
        if "SUBSCRIBED" in selection:
            for name in sorted(subscribed - existing):
                if matcher.match(name):
                    shown.append((name, ["\\NonExistent", "\\Subscribed"]))
        for name, attrs in shown:
            self.sendUntaggedResponse(
                command + b" (" + " ".join(attrs).encode("ascii") + b') "/" ' + encode_mailbox(name)
            )

    def _lsub(self, entries: list[MailboxEntry], subscribed: set[str],
              matcher: ListMatcher, patterns: list[bytes]) -> None:
        existing = {e.name: e for e in entries}
        shown: dict[str, list[str]] = {}
        for name in sorted(subscribed, key=lambda n: (n != "INBOX", n)):
            if matcher.match(name):
                entry = existing.get(name)
                shown[name] = ["\\Noselect"] if entry is None else [
                    "\\HasChildren" if entry.has_children else "\\HasNoChildren"]
                if entry is not None and entry.special_use:
                    shown[name].append(entry.special_use)
                continue
            if any(b"%" in p for p in patterns):  # RFC 3501 6.3.9: an unsubscribed parent
                levels = name.split(DELIMITER)
                for depth in range(len(levels) - 1, 0, -1):
                    parent = DELIMITER.join(levels[:depth])
                    if matcher.match(parent) and parent not in subscribed:
                        shown.setdefault(parent, ["\\Noselect"])
                        break
        for name, attrs in shown.items():
            self.sendUntaggedResponse(
                b"LSUB (" + " ".join(attrs).encode("ascii") + b') "/" ' + encode_mailbox(name)
            )

    async def cmd_LSUB(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_LIST(tag, args, b"LSUB")

    async def cmd_XLIST(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_LIST(tag, args, b"XLIST")

    for _f in (cmd_LIST, cmd_LSUB, cmd_XLIST):
        _f.imap_states = ("auth", "select")  # type: ignore[attr-defined]
    del _f

    # -- STATUS ------------------------------------------------------------------------------
    async def cmd_STATUS(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        args.sp()
        items = [
            bytes(i).upper().decode("ascii", "replace")
            for i in args.paren_list()
            if not isinstance(i, list)
        ]
        args.end()
        if not items or any(i not in _STATUS_ITEMS for i in items):
            raise ParseError("unknown or missing STATUS item")
        if "HIGHESTMODSEQ" in items:
            self.enabled.add(b"CONDSTORE")  # CONDSTORE-enabling (RFC 7162 3.1)
        status = await self.account.status(name, self.recent)
        values = b" ".join(b"%s %d" % (i.encode(), status[i]) for i in items)
        self.sendUntaggedResponse(b"STATUS " + encode_mailbox(name) + b" (" + values + b")")
        self.sendPositiveResponse(tag, b"Status completed.")

    cmd_STATUS.imap_states = ("auth", "select")  # type: ignore[attr-defined]
