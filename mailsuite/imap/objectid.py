"""OBJECTID (RFC 8474) and CREATE-SPECIAL-USE (RFC 6154 3), with CREATE.

- MAILBOXID: the store's per-folder id (``store.folderattrs``: made at the first look, kept
  across RENAME, never reused), in ``OK [MAILBOXID (id)]`` after CREATE and in SELECT/EXAMINE
  (folders.py calls ``mailbox_id_line``), and the STATUS item MAILBOXID (status.py's registry);
- EMAILID: ``M`` and the store's fingerprint of the message content (``IMailbox.email_id``: the
  same after COPY or MOVE and after a rewrite by another program), also the SEARCH key
  ``EMAILID id``; THREADID (the FETCH item and the SEARCH key) is threadid.py's;
- ``CREATE name (USE (\\Drafts))`` (RFC 6154 3, create parameters of RFC 4466): the folder gets
  that special-use attribute (LIST shows it); one the store cannot give (``\\All``,
  ``\\Flagged``, an unknown one, more than one) is ``NO [USEATTR]`` and nothing is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mailsuite.imap import threadid  # noqa: F401  (registers THREADID)
from mailsuite.imap.fetch import register_atom
from mailsuite.imap.parser import DELIMITER, Cursor, ParseError
from mailsuite.imap.search import ExtraKey, register_key
from mailsuite.imap.session import states
from mailsuite.imap.status import STATUS_ITEMS, StatusFacts
from mailsuite.store.folderattrs import check_use
from mailsuite.store.interfaces import InvalidMailboxName, StoreError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()


async def mailbox_id(session: Any, name: str) -> bytes:
    """The MAILBOXID of folder ``name`` (store errors propagate)."""
    account = session.account
    attrs = await account.store.folder_attrs(account.account, name)
    return str(attrs.mailbox_id).encode("ascii")


async def mailbox_id_line(session: Any, name: str) -> bytes | None:
    """``OK [MAILBOXID (id)]`` for SELECT/EXAMINE; None if the store cannot tell (no such
    folder: SELECT answers that; a refused ~/mail: INBOX is still selected)."""
    try:
        found = await mailbox_id(session, name)
    except StoreError as e:
        log.debug("no MAILBOXID for {name}: {why}", name=name, why=e)
        return None
    return b"OK [MAILBOXID (" + found + b")] Ok"


async def _status_mailbox_id(facts: StatusFacts) -> bytes:
    return b"(" + await mailbox_id(facts.session, facts.name) + b")"


def _email_id(view: Any, uid: int) -> bytes:
    get = getattr(view.mailbox, "email_id", None)
    found = get(uid) if get is not None else None
    if found is None:  # expunged meanwhile or a store without fingerprints: stable per mailbox
        return b"EMAILID (M%x-%d)" % (view.uid_validity, uid)
    return b"EMAILID (M" + str(found).encode("ascii") + b")"


STATUS_ITEMS["MAILBOXID"] = _status_mailbox_id
register_atom("EMAILID", _email_id)
register_key("EMAILID", ExtraKey(
    lambda p: (p.next().value,),
    lambda key, c: _email_id(c.view, c.uid) == b"EMAILID (%s)" % key[1]))


def _create_uses(args: Cursor) -> list[str]:
    """The USE attributes of CREATE's parameter list (RFC 4466 create-param); BAD for any other
    parameter."""
    if not args.maybe_sp():
        return []
    params = args.paren_list()
    uses: list[str] = []
    while params:
        name = params.pop(0)
        if isinstance(name, list) or bytes(name).upper() != b"USE":
            raise ParseError("unknown CREATE parameter")
        if not params or not isinstance(params[0], list):
            raise ParseError("USE takes a list of attributes")
        for flag in params.pop(0):
            if isinstance(flag, list):
                raise ParseError("USE takes a list of attributes")
            uses.append(bytes(flag).decode("ascii", "replace"))
    return uses


class ObjectIdCommands(_Base):
    """CREATE (with USE, answering MAILBOXID) for ``IMAPServer`` (what it uses: ``Session``)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return dict.fromkeys((b"CREATE-SPECIAL-USE", b"OBJECTID"))

    @states("auth", "select")
    async def cmd_CREATE(self, tag: bytes, args: Cursor) -> bool:
        """True if the mailbox was created (NOTIFY's MailboxName event: notify.py)."""
        args.sp()
        name = args.mailbox().rstrip(DELIMITER)  # "a/" means "a, to hold children"
        uses = _create_uses(args)
        args.end()
        try:
            if len(uses) > 1:
                raise InvalidMailboxName("a folder has one special use here")
            use = check_use(uses[0]) if uses else None
        except InvalidMailboxName as e:
            self.sendNegativeResponse(tag, b"[USEATTR] " + str(e).encode("utf-8", "replace"))
            return False
        await self.account.create(name)
        store, account = self.account.store, self.account.account
        try:
            attrs = await store.folder_attrs(account, name, use)
        except StoreError as e:
            if use is None:
                log.info("no MAILBOXID for {name}: {why}", name=name, why=e)
                self.sendPositiveResponse(tag, b"Create completed.")
                return True
            await self.account.delete(name)  # RFC 6154 3: not created without its use
            self.sendNegativeResponse(tag, b"[USEATTR] Cannot keep the special use.")
            return False
        self.sendPositiveResponse(
            tag, b"[MAILBOXID (" + str(attrs.mailbox_id).encode("ascii") + b")] Create completed.")
        return True


__all__ = ["ObjectIdCommands", "mailbox_id", "mailbox_id_line"]
