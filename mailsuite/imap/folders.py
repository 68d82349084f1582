"""Mailbox-level IMAP commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE
(LIST/LSUB/XLIST: ``listext.ListCommands``; STATUS: ``status.StatusCommands``; CREATE:
``objectid.ObjectIdCommands``; APPEND: ``append.AppendCommands``).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``):
``self.account`` is the ``ImapAccount``; store errors become tagged NO replies in
``IMAPServer._failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsuite.imap.objectid import mailbox_id_line
from mailsuite.imap.parser import (
    DELIMITER,
    Cursor,
    encode_mailbox,
)
from mailsuite.store.interfaces import MailboxNotFound

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

class FolderCommands(_Base):
    # -- SELECT / EXAMINE --------------------------------------------------------------------
    async def cmd_SELECT(self, tag: bytes, args: Cursor, readonly: bool = False) -> None:
        args.sp()
        name = args.mailbox()
        params = args.paren_list() if args.maybe_sp() and args.peek() == b"(" else []
        args.end()
        told = self.select_parameters(params)  # CONDSTORE: condstore.py
        self._close_view()
        mailbox_id = await mailbox_id_line(self, name)  # OBJECTID (objectid.py)
        replies = await self.select_replies(name)  # IMAP4rev1 or IMAP4rev2 (rev2.py)
        try:
            view = await self.account.open_view(name, readonly, replies.tracker)
        except MailboxNotFound:
            wire = encode_mailbox(name, self.utf8_names)
            self.sendNegativeResponse(tag, b"[NONEXISTENT] Mailbox doesn't exist: " + wire)
            return
        if self._lost:
            self.account.close_view(view)
            return
        for line in view.flags_responses():
            self.sendUntaggedResponse(line)
        self.sendUntaggedResponse(b"%d EXISTS" % view.count())
        for line in replies.lines(view):  # RECENT and [UNSEEN n], or IMAP4rev2's LIST
            self.sendUntaggedResponse(line)
        self.sendUntaggedResponse(b"OK [UIDVALIDITY %d] UIDs valid" % view.uid_validity)
        self.sendUntaggedResponse(b"OK [UIDNEXT %d] Predicted next UID" % view.uid_next)
        if mailbox_id is not None:
            self.sendUntaggedResponse(mailbox_id)
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

    for _f in (cmd_DELETE, cmd_RENAME, cmd_SUBSCRIBE, cmd_UNSUBSCRIBE):
        _f.imap_states = ("auth", "select")  # type: ignore[attr-defined]
    del _f
