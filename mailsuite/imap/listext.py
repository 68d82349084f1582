"""LIST, LSUB and XLIST: RFC 3501 6.3.8-9, LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
the SPECIAL-USE selection and return options (RFC 6154 5.1) and Apple's XLIST.

``LIST [(selection)] reference (pattern | (pattern ...)) [RETURN (options)]``:

- selection SUBSCRIBED (implies the SUBSCRIBED return option) lists subscribed names, also
  those that are no mailbox (``\\NonExistent``); SPECIAL-USE lists special-use mailboxes only;
  REMOTE changes nothing (every mailbox is local); RECURSIVEMATCH (with one of the first two)
  also lists a matching name with a descendant that meets the criteria but is not matched by
  the patterns, with ``("CHILDINFO" ("SUBSCRIBED"))`` (as Dovecot); unknown selection options
  or RECURSIVEMATCH alone are BAD;
- return SUBSCRIBED adds ``\\Subscribed``; CHILDREN is always on (the server has CHILDREN);
  SPECIAL-USE: the attributes are always sent; STATUS (items) adds a ``* STATUS`` reply after
  each selectable mailbox's LIST line (status.py's items); unknown return options are BAD;
- a hierarchy level that is no mailbox but holds one the patterns do not match (``%``) is
  listed ``\\NonExistent`` (RFC 5258 3: it implies ``\\NoSelect``).

LSUB keeps RFC 3501's rules (an unsubscribed parent ``\\Noselect`` for ``%``) and INBOX always
subscribed (Outlook expects it there). ``LIST "" ""`` gives the delimiter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mailsuite.imap.listmatch import ListMatcher, PatternTooLong, full_pattern
from mailsuite.imap.parser import DELIMITER, Cursor, ParseError, encode_mailbox, mailbox_name
from mailsuite.imap.parser import modified_utf7
from mailsuite.imap.session import states
from mailsuite.imap.status import parse_items, status_line, status_values
from mailsuite.store.interfaces import MailboxEntry, StoreError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

SELECTION = frozenset({"SUBSCRIBED", "SPECIAL-USE", "REMOTE", "RECURSIVEMATCH"})
RETURNS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _options(items: list[Any], known: frozenset[str], what: str) -> dict[str, Any]:
    """Option name -> its parameter list (None without), BAD for an unknown option."""
    out: dict[str, Any] = {}
    for item in items:
        if isinstance(item, list):
            if not out or out[list(out)[-1]] is not None:
                raise ParseError(f"unexpected list among the {what} options")
            out[list(out)[-1]] = item
            continue
        name = bytes(item).decode("ascii", "replace").upper()
        if name not in known:
            raise ParseError(f"unknown {what} option {name}")
        out[name] = None
    return out


def _parents(name: str) -> Iterable[str]:
    levels = name.split(DELIMITER)
    return (DELIMITER.join(levels[:i]) for i in range(1, len(levels)))


class ListRequest:
    """One LIST command, parsed: its options, patterns and what it asks to see."""

    def __init__(self, command: bytes, args: Cursor) -> None:
        self.command = command
        extended = command == b"LIST"
        args.sp()
        selection: dict[str, Any] = {}
        if extended and args.peek() == b"(":
            selection = _options(args.paren_list(), SELECTION, "selection")
            args.sp()
        self.utf8 = args.utf8  # UTF8=ACCEPT (utf8.py): names in UTF-8, not modified UTF-7
        self.ref = mailbox_name(args.astring(), self.utf8)
        args.sp()
        if extended and args.peek() == b"(":
            self.patterns = [bytes(p) for p in args.paren_list() if not isinstance(p, list)]
        else:
            self.patterns = [args.list_mailbox()]
        returns: dict[str, Any] = {}
        if extended and args.maybe_sp():
            if args.atom().upper() != b"RETURN":
                raise ParseError("expected RETURN")
            args.sp()
            returns = _options(args.paren_list(), RETURNS, "return")
        args.end()
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        if any(v is not None for v in selection.values()):
            raise ParseError("selection options take no parameters")
        self.status = parse_items(returns["STATUS"] or []) if "STATUS" in returns else []
        self.criteria = [o for o in ("SUBSCRIBED", "SPECIAL-USE") if o in selection]
        self.recursive = "RECURSIVEMATCH" in selection
        self.show_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns

    def matcher(self) -> ListMatcher:
        return ListMatcher(full_pattern(self.ref, mailbox_name(p, self.utf8) if p else "")
                           for p in self.patterns)


class ListCommands(_Base):
    """LIST, LSUB, XLIST for ``IMAPServer`` (what they use of it: ``Session``)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return dict.fromkeys((b"LIST-EXTENDED", b"LIST-STATUS"))

    @states("auth", "select")
    async def cmd_LIST(self, tag: bytes, args: Cursor, command: bytes = b"LIST") -> None:
        req = ListRequest(command, args)
        if command != b"LSUB" and req.patterns == [b""]:
            self.sendUntaggedResponse(command + b' (\\Noselect) "/" ""')
            self.sendPositiveResponse(tag, command.capitalize() + b" completed.")
            return
        try:
            matcher = req.matcher()
        except PatternTooLong as e:
            self.sendNegativeResponse(tag, b"[LIMIT] " + str(e).encode("ascii"))
            return
        entries = await self.account.list_mailboxes()
        subscribed: set[str] = set()
        if command == b"LSUB" or req.show_subscribed:
            subscribed = {
                mailbox_name(modified_utf7(n)) for n in await self.account.subscriptions()
            }
            subscribed.add("INBOX")  # always subscribed, as Outlook expects it in LSUB
        if command == b"LSUB":
            self._lsub(entries, subscribed, matcher, req.patterns)
        else:
            for name, line in self._list_lines(req, entries, subscribed, matcher):
                if self._lost:  # gone while a STATUS was read: nothing more to say
                    return
                self.sendUntaggedResponse(line)
                if req.status and name is not None:
                    await self._list_status(name, req.status)
        self.sendPositiveResponse(tag, command.capitalize() + b" completed.")

    async def _list_status(self, name: str, items: list[str]) -> None:
        """RFC 5819: the STATUS reply after the LIST line; none if it cannot be had."""
        try:
            values = await status_values(self, name, items)
        except StoreError as e:
            log.info("LIST-STATUS of {name} skipped: {why}", name=name, why=e)
            return
        if not self._lost:
            self.sendUntaggedResponse(status_line(name, values, self.utf8_names))

    def _list_lines(self, req: ListRequest, entries: list[MailboxEntry], subscribed: set[str],
                    matcher: ListMatcher) -> list[tuple[str | None, bytes]]:
        """(the name if selectable, the LIST line) of each mailbox to show, in list order."""
        existing = {e.name: e for e in entries}
        names = set(existing) | (subscribed if "SUBSCRIBED" in req.criteria else set())
        names |= {p for n in list(names) for p in _parents(n)}

        def meets(name: str) -> bool:
            entry = existing.get(name)
            if "SPECIAL-USE" in req.criteria and (entry is None or not entry.special_use):
                return False
            return name in subscribed if "SUBSCRIBED" in req.criteria else entry is not None

        hits = {n for n in names if meets(n)}
        # has a descendant that meets the criteria but is not matched (so not listed itself)
        below = {p for n in hits if not matcher.match(n) for p in _parents(n)}
        out: list[tuple[str | None, bytes]] = []
        for name in sorted(names, key=lambda n: (n != "INBOX", n)):
            if not matcher.match(name):
                continue
            childinfo = req.recursive and name in below
            if name not in hits and not childinfo and (req.criteria or name not in below):
                continue
            entry = existing.get(name)
            attrs = self._attributes(req, name, entry, subscribed, existing)
            line = req.command + b" (" + " ".join(attrs).encode("ascii") + b') "/" '
            line += encode_mailbox(name, self.utf8_names)
            if childinfo:
                line += b' ("CHILDINFO" (%s))' % b" ".join(
                    b'"%s"' % c.encode("ascii") for c in req.criteria)
            out.append((name if entry is not None else None, line))
        return out

    @staticmethod
    def _attributes(req: ListRequest, name: str, entry: MailboxEntry | None,
                    subscribed: set[str], existing: dict[str, MailboxEntry]) -> list[str]:
        if entry is None:
            has_children = any(n.startswith(name + DELIMITER) for n in existing)
            attrs = ["\\NonExistent"] + (["\\HasChildren"] if has_children else [])
        else:
            attrs = ["\\HasChildren" if entry.has_children else "\\HasNoChildren"]
        if req.show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if entry is not None and entry.special_use:
            attrs.append(entry.special_use)
            if req.command == b"XLIST" and entry.special_use == "\\Junk":
                attrs.append("\\Spam")
        if req.command == b"XLIST" and name == "INBOX":
            attrs.append("\\Inbox")
        return attrs

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
                b"LSUB (" + " ".join(attrs).encode("ascii") + b') "/" '
                + encode_mailbox(name, self.utf8_names)
            )

    @states("auth", "select")
    async def cmd_LSUB(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_LIST(tag, args, b"LSUB")

    @states("auth", "select")
    async def cmd_XLIST(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_LIST(tag, args, b"XLIST")


__all__ = ["ListCommands", "ListRequest"]
