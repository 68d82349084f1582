"""The IMAP commands of any state that need no mailbox: CAPABILITY, ID, ENABLE, NAMESPACE, and
the capability list (what the command handlers implement)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor
from mailsuite.imap.quota import CAPABILITIES as QUOTA_CAPABILITIES
from mailsuite.imap.quota import quota_on
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object


class GeneralCommands(_Base):
    """For ``IMAPServer`` (what they use of it: ``Session``)."""

    # -- capabilities ---------------------------------------------------------------------------
    def capabilities(self) -> dict[bytes, Any]:
        """The login capabilities (``ImapLogin``: SASL-IR, STARTTLS, AUTH= or LOGINDISABLED, only
        before login) and every extension the command handlers implement."""
        caps: dict[bytes, Any] = self.login_capabilities()
        for name in (b"LITERAL+", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
                     b"UNSELECT", b"CHILDREN", b"SPECIAL-USE", b"XLIST"):
            caps[name] = None
        if quota_on(self.config):  # [mailbox] quota_rule (imap/quota.py)
            caps.update(dict.fromkeys((*QUOTA_CAPABILITIES, b"STATUS=SIZE")))
        return caps

    # -- any state -----------------------------------------------------------------------------
    @states("unauth", "auth", "select")
    def cmd_CAPABILITY(self, tag: bytes, args: Cursor) -> None:
        args.end()
        self.sendUntaggedResponse(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        self.sendPositiveResponse(
            tag,
            b"Pre-login capabilities listed, post-login capabilities have more."
            if self.state == "unauth"
            else b"Capability completed.",
        )

    @states("unauth", "auth", "select")
    def cmd_ID(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        if args.peek() == b"(":
            args.paren_list()
        else:
            args.nstring()
        args.end()
        self.sendUntaggedResponse(b'ID ("name" "mailsuite" "vendor" "mailsuite")')
        self.sendPositiveResponse(tag, b"ID completed.")

    @states("auth", "select")
    def cmd_ENABLE(self, tag: bytes, args: Cursor) -> None:
        """RFC 5161. None of the extensions that can be enabled is offered (never UIDONLY)."""
        args.sp()
        while not args.at_end():
            args.atom()
            args.maybe_sp()
        self.sendUntaggedResponse(b"ENABLED")
        self.sendPositiveResponse(tag, b"Enabled.")

    @states("auth", "select")
    def cmd_NAMESPACE(self, tag: bytes, args: Cursor) -> None:
        args.end()
        self.sendUntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL')
        self.sendPositiveResponse(tag, b"Namespace completed.")
