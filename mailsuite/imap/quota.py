"""IMAP QUOTA (RFC 9208) over the store's quota (mailsuite/store/quota.py).

One quota root, Dovecot's ``"User quota"``, for every mailbox of the account (the limits count
INBOX and all folders together). ``GETQUOTAROOT`` names it and gives its ``QUOTA``;
``GETQUOTA`` gives its usage: ``STORAGE`` in units of 1024 octets, ``MESSAGE`` in messages, a
resource without a limit left out (an account with no limit has no quota root). ``SETQUOTA`` is
refused: limits are the administrator's (mail.ini, quota_rule_file). Advertised (``QUOTA``,
``QUOTA=RES-STORAGE``, ``QUOTA=RES-MESSAGE``) only when ``[mailbox] quota_rule`` or
``quota_rule_file`` is set; STATUS answers ``DELETED``, ``DELETED-STORAGE`` (RFC 9208 4.2) and
``SIZE`` (RFC 8438) always. A write over quota is ``NO [OVERQUOTA]`` (the store's
QuotaExceeded, through the server's StoreRefused answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor, encode_mailbox
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

ROOT = b"User quota"  # Dovecot's name of the user's quota root
CAPABILITIES = (b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE")


def quota_on(config: Any) -> bool:
    return bool(getattr(getattr(config, "mailbox", None), "quota_configured", False))


def quota_list(usage: Any, limits: Any) -> bytes:
    """``(STORAGE used limit MESSAGE used limit)``, the resources that have a limit."""
    parts = []
    if limits.storage:
        parts.append(b"STORAGE %d %d" % ((usage.storage + 1023) // 1024, limits.storage // 1024))
    if limits.messages:
        parts.append(b"MESSAGE %d %d" % (usage.messages, limits.messages))
    return b"(" + b" ".join(parts) + b")"


async def admit(account: Any, size: int, count: int) -> None:
    """COPY and MOVE: all the messages within the quota, or none copied (RFC 3501 6.4.7:
    a failed COPY leaves the target as it was): QuotaExceeded (``NO [OVERQUOTA]``)."""
    check = getattr(account.store, "quota_admit", None)
    if check is not None and count:
        await check(account.account, size, count)


class QuotaCommands(_Base):
    """For ``IMAPServer`` (what they use of it: ``Session``)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        """Only with [mailbox] quota_rule set."""
        return dict.fromkeys((*CAPABILITIES, b"STATUS=SIZE")) if quota_on(self.config) else {}

    async def _quota(self) -> tuple[Any, Any] | None:
        """(usage, limits) of the logged-in account; None: no quota for it."""
        report = getattr(self.account.store, "quota_report", None)
        d = report(self.account.account) if report is not None and quota_on(self.config) \
            else None
        if d is None:
            return None
        usage, limits = await d
        return (usage, limits) if limits.storage or limits.messages else None

    @states("auth", "select")
    async def cmd_GETQUOTAROOT(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        name = args.mailbox()
        args.end()
        mailbox = await self.account.store.open(self.account.account, name)  # it exists
        mailbox.close()
        found = await self._quota()
        wire = encode_mailbox(name, self.utf8_names)
        if found is None:
            self.sendUntaggedResponse(b"QUOTAROOT " + wire)
        else:
            self.sendUntaggedResponse(b'QUOTAROOT %s "%s"' % (wire, ROOT))
            self.sendUntaggedResponse(b'QUOTA "%s" %s' % (ROOT, quota_list(*found)))
        self.sendPositiveResponse(tag, b"Getquotaroot completed.")

    @states("auth", "select")
    async def cmd_GETQUOTA(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        root = args.astring()
        args.end()
        found = await self._quota() if root == ROOT else None
        if found is None:
            self.sendNegativeResponse(tag, b"Quota root does not exist.")
            return
        self.sendUntaggedResponse(b'QUOTA "%s" %s' % (ROOT, quota_list(*found)))
        self.sendPositiveResponse(tag, b"Getquota completed.")

    @states("auth", "select")
    def cmd_SETQUOTA(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        args.astring()
        args.sp()
        args.paren_list()
        args.end()
        self.sendNegativeResponse(tag, b"[NOPERM] Quota can be changed only by the"
                                       b" administrator.")
