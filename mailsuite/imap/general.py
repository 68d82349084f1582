"""The IMAP commands of any state that need no mailbox: CAPABILITY, ID, ENABLE, NAMESPACE, and
the capability list (what the command handlers implement).

Extensions plug in without touching this module:

- a command mixin of ``IMAPServer`` may define ``own_capabilities(self) -> dict[bytes, Any]``
  (its class's own, not inherited): ``capabilities`` merges every mixin's, in MRO order, so a
  mixin advertises exactly what it implements, and may make that depend on the session (state,
  TLS, compression, configuration);
- ``ENABLE X`` (RFC 5161) calls ``enable_X(self) -> bool`` (``=`` and ``-`` in X read as ``_``;
  ``ENABLE CONDSTORE`` calls ``enable_CONDSTORE``) when a mixin defines it: True if X is now on
  (listed in ``* ENABLED``), False if refused; unknown names enable nothing (never UIDONLY);
- ``self.enabled`` is the set of names enabled in the session (``b"QRESYNC"``...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor
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
        for cls in type(self).__mro__:
            own = vars(cls).get("own_capabilities")
            if own is not None:
                caps.update(own(self))
        return caps

    def own_capabilities(self) -> dict[bytes, Any]:
        return dict.fromkeys((b"ID", b"ENABLE", b"IDLE", b"NAMESPACE", b"UIDPLUS",
                              b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE", b"XLIST"))

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
        """RFC 5161: what a mixin's ``enable_X`` turns on (never UIDONLY, which none defines);
        ``* ENABLED`` lists what this command enabled, not what was on before."""
        args.sp()
        names: list[bytes] = []
        while not args.at_end():
            names.append(args.atom().upper())
            args.maybe_sp()
        now: list[bytes] = []
        for name in names:
            if name in self.enabled or name in now:
                continue
            hook = getattr(self, "enable_" + name.decode("ascii", "replace").replace(
                "=", "_").replace("-", "_"), None)
            if hook is not None and hook():
                self.enabled.add(name)
                now.append(name)
        self.sendUntaggedResponse(b" ".join([b"ENABLED", *now]))
        self.sendPositiveResponse(tag, b"Enabled.")

    @states("auth", "select")
    def cmd_NAMESPACE(self, tag: bytes, args: Cursor) -> None:
        args.end()
        self.sendUntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL')
        self.sendPositiveResponse(tag, b"Namespace completed.")
