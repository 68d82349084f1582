"""CONDSTORE (RFC 7162 section 3.1): mod-sequences of messages and mailboxes.

The store keeps them (``mailsuite.store.modseq``): each message's ``modseq`` and the mailbox's
``highest_modseq``. This mixin of ``IMAPServer`` gives the protocol: ``SELECT/EXAMINE
(CONDSTORE)`` with ``[HIGHESTMODSEQ n]``, the ``MODSEQ`` FETCH item (fetch.py renders it), the
``CHANGEDSINCE`` FETCH modifier, ``STORE (UNCHANGEDSINCE n)`` with ``[MODIFIED set]``, the
``MODSEQ`` search key with ``(MODSEQ n)`` at the end of the SEARCH reply, ``STATUS
HIGHESTMODSEQ`` and ``ENABLE CONDSTORE``.

Any of these turns CONDSTORE on for the session (a "CONDSTORE-enabling command", RFC 7162
3.1): from then on every unsolicited FETCH and every FETCH of a STORE carries ``UID`` and
``MODSEQ`` (``ImapMailboxView.condstore``), and when it is turned on while a mailbox is selected
the client is told ``[HIGHESTMODSEQ n]`` at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailsuite.imap.encode import format_flags, number_set
from mailsuite.imap.fetch import FetchPlan, FetchSyntaxError, fetch_plan
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.parser import Cursor, ParseError, parse_flag_list
from mailsuite.imap.qresync import parse_qresync, resync_lines, vanished_earlier
from mailsuite.imap.selected import _selected_only, uid_command
from mailsuite.imap.status import STATUS_ITEMS, StatusFacts
from mailsuite.imap.viewmodseq import modseq_value

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

Targets = list[tuple[int, int]]
Keep = Callable[[list[Any], Targets], Targets]  # (sequence set, targets) -> those to fetch

#: the FETCH modifiers at the end of the command: ``(CHANGEDSINCE n)``, ``(CHANGEDSINCE n
#: VANISHED)`` in either order; anything else there is a syntax error of the attribute list
_MODIFIERS = re.compile(rb"\s+\(((?:CHANGEDSINCE\s+\d+|VANISHED)(?:\s+(?:CHANGEDSINCE\s+\d+|"
                        rb"VANISHED))*)\)\s*\Z", re.IGNORECASE)
_MACROS = {b"ALL": b"FLAGS INTERNALDATE RFC822.SIZE ENVELOPE", b"FAST": b"FLAGS INTERNALDATE "
           b"RFC822.SIZE", b"FULL": b"FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY"}


def with_items(text: bytes, *names: bytes) -> bytes:
    """A FETCH attribute list (a list, a macro or one item) with ``names`` added."""
    text = text.strip()
    inner = text[1:-1] if text.startswith(b"(") and text.endswith(b")") else text
    inner = _MACROS.get(inner.upper(), inner)
    return b"(" + b" ".join([inner, *names]) + b")"


def fetch_modifiers(text: bytes) -> tuple[bytes, int | None, bool]:
    """(the attribute list, CHANGEDSINCE or None, VANISHED asked) of FETCH's arguments."""
    m = _MODIFIERS.search(text)
    if m is None:
        return text, None, False
    words = m.group(1).upper().split()
    since, vanished = None, False
    i = 0
    while i < len(words):
        if words[i] == b"VANISHED":
            if vanished:
                raise ParseError("VANISHED given twice")
            vanished, i = True, i + 1
        else:
            if since is not None:
                raise ParseError("CHANGEDSINCE given twice")
            since, i = modseq_value(words[i + 1]), i + 2
    return text[: m.start()], since, vanished


def _plan(atts: bytes, uid: bool) -> FetchPlan:
    try:
        return fetch_plan(atts, uid)
    except FetchSyntaxError as e:
        raise ParseError(str(e)) from None


def search_has_modseq(key: Any) -> bool:
    """Whether a parsed search key (search.py) uses the MODSEQ key."""
    if not isinstance(key, tuple) or not key:
        return False
    if key[0] == "MODSEQ":
        return True
    return any(search_has_modseq(k) for part in key[1:] for k in
               (part if isinstance(part, list) else [part]))


def _status_highest_modseq(facts: StatusFacts) -> bytes:
    """STATUS HIGHESTMODSEQ (also in LIST-STATUS), a CONDSTORE-enabling item (RFC 7162 3.1)."""
    facts.session._condstore_on()
    return b"%d" % facts.mailbox.highest_modseq


STATUS_ITEMS["HIGHESTMODSEQ"] = _status_highest_modseq


class CondstoreCommands(_Base):
    """For ``IMAPServer`` (what they use of it: ``Session``)."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"CONDSTORE": None}

    def enable_CONDSTORE(self) -> bool:
        self._condstore_on(tell=False)
        return True

    def _condstore_on(self, tell: bool = True) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1) ran: on for the rest of the session; the
        selected mailbox's HIGHESTMODSEQ is told when it was not on before (``tell``)."""
        was = b"CONDSTORE" in self.enabled
        self.enabled.add(b"CONDSTORE")
        view = self.view
        if view is not None and not view.condstore:
            view.condstore = True
            if tell or not was:
                self.sendUntaggedResponse(
                    b"OK [HIGHESTMODSEQ %d] Highest" % view.mailbox.highest_modseq)

    # -- SELECT / EXAMINE (hook of folders.FolderCommands.cmd_SELECT) ----------------------------
    def select_parameters(self, params: list[Any]) -> Callable[[ImapMailboxView], None]:
        """What the SELECT parameters ask, checked before the mailbox is opened: the function
        that sends their responses once it is (``[HIGHESTMODSEQ n]``, QRESYNC's resync).
        BAD on unknown ones, and on QRESYNC not enabled (RFC 7162 3.2.5)."""
        qresync = None
        i = 0
        while i < len(params):
            name = b"" if isinstance(params[i], list) else bytes(params[i]).upper()
            if name == b"CONDSTORE":
                self.enabled.add(b"CONDSTORE")
            elif name == b"QRESYNC" and i + 1 < len(params) and qresync is None:
                if b"QRESYNC" not in self.enabled:
                    raise ParseError("QRESYNC is not enabled")
                qresync, i = parse_qresync(params[i + 1]), i + 1
            else:
                raise ParseError("unknown SELECT parameter")
            i += 1
        if self.view is not None:  # (RFC 7162 3.2.11; Dovecot tells it also without QRESYNC)
            self.sendUntaggedResponse(b"OK [CLOSED] Previous mailbox closed.")

        def told(view: ImapMailboxView) -> None:
            # every SELECT, as Dovecot: the mod-sequences are kept (RFC 7162 3.1.2.1)
            view.qresync = b"QRESYNC" in self.enabled
            view.condstore = b"CONDSTORE" in self.enabled
            self.sendUntaggedResponse(
                b"OK [HIGHESTMODSEQ %d] Highest" % view.mailbox.highest_modseq)
            for line in resync_lines(view, *qresync) if qresync is not None else ():
                self.sendUntaggedResponse(line)

        return told

    # -- FETCH (hook of selected.SelectedCommands.cmd_FETCH) ----------------------------------
    def fetch_modifiers(self, text: bytes, uid: bool) -> tuple[FetchPlan, Keep]:
        """FETCH's plan of its attribute list (MODSEQ added where RFC 7162 wants it: read once
        more only then), and the filter of the targets the modifiers select."""
        view = self.view
        assert view is not None
        atts, since, vanished = fetch_modifiers(text)
        if vanished and not (uid and since is not None and b"QRESYNC" in self.enabled):
            raise ParseError("VANISHED needs QRESYNC, UID FETCH and CHANGEDSINCE")
        plan = _plan(atts, uid)
        asks = any(i.name == "MODSEQ" for i in plan.items)
        if since is not None or asks:
            self._condstore_on()
        extra = []
        if since is not None and not asks:
            extra.append(b"MODSEQ")  # CHANGEDSINCE implies it
        if view.condstore and plan.sets_seen and not view.readonly:
            extra += [n for n in (b"UID", b"MODSEQ") if n not in extra and not any(
                i.name == n.decode() for i in plan.items)]
        if extra:
            plan = _plan(with_items(atts, *extra), uid)
        if since is None:
            return plan, lambda ranges, targets: targets

        def keep(ranges: list[Any], targets: Targets) -> Targets:
            for line in vanished_earlier(view, since, ranges) if vanished else ():
                self.sendUntaggedResponse(line)
            return [t for t in targets if view.info(t[1]).modseq > since]

        return plan, keep

    # -- SEARCH (hook of selected.SelectedCommands.cmd_SEARCH) --------------------------------
    def search_result(self, key: Any, found: list[int], uid: bool) -> bytes:
        """`` (MODSEQ n)`` after the numbers when the key used MODSEQ: the highest of the
        messages found (RFC 7162 3.1.5)."""
        if not search_has_modseq(key):
            return b""
        self._condstore_on()
        view = self.view
        assert view is not None
        if not found:
            return b""
        if uid:
            uids = found
        else:
            every = view.uids()
            uids = [every[n - 1] for n in found]
        return b" (MODSEQ %d)" % max(view.info(u).modseq for u in uids)

    # -- STORE ---------------------------------------------------------------------------------
    def _unchanged_since(self, args: Cursor) -> int | None:
        """``(UNCHANGEDSINCE n)`` before the STORE item, if given."""
        if args.peek() != b"(":
            return None
        items = args.paren_list()
        args.sp()
        if len(items) != 2 or isinstance(items[0], list) or isinstance(items[1], list) or bytes(
                items[0]).upper() != b"UNCHANGEDSINCE":
            raise ParseError("unknown STORE modifier")
        since = modseq_value(bytes(items[1]))
        self._condstore_on()
        return since

    async def cmd_STORE(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        view = self.view
        assert view is not None
        args.sp()
        ranges = args.sequence_set()
        args.sp()
        since = self._unchanged_since(args)
        mode = args.atom().upper()
        args.sp()
        if args.peek() == b"(":
            flags = parse_flag_list(args.paren_list())
        else:
            words = []
            while not args.at_end():
                words.append(args.flag())
                args.maybe_sp()
            flags = parse_flag_list(words)
        args.end()
        silent = mode.endswith(b".SILENT")
        op = mode[: -len(b".SILENT")] if silent else mode
        if op not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            raise ParseError("Invalid STORE item")
        targets = self._targets(ranges, uid)
        if view.readonly:
            self.sendNegativeResponse(tag, b"Mailbox is read-only.")
            return
        live = [u for _, u in targets if not view.is_expunged(u)]
        failed: set[int] = set()
        if since is not None:
            # against what the store holds now, also what the client was not told yet
            failed = {u for u in live if view.store_modseq(u, view.info(u)) > since}
            live = [u for u in live if u not in failed]
        before = {u: view.info(u).modseq for u in live}
        wanted = frozenset(flags)
        if op == b"FLAGS":
            await view.change_flags(live, replace=wanted)
        elif op == b"+FLAGS":
            await view.change_flags(live, add=wanted)
        else:
            await view.change_flags(live, remove=wanted)
        self._send_flags_update()  # also for .SILENT: the defined flags changed
        self._store_replies(tag, targets, uid, silent, failed, before)

    def _store_replies(self, tag: bytes, targets: Targets, uid: bool, silent: bool,
                       failed: set[int], before: dict[int, int]) -> None:
        """The FETCH responses of a STORE (with ``.SILENT`` under CONDSTORE: the new MODSEQ of
        the messages it changed, RFC 7162 3.1.3) and its tagged reply."""
        view = self.view
        assert view is not None
        missing = False
        modified: list[int] = []
        for seq, u in targets:
            if view.is_expunged(u):
                missing = True
            elif u in failed:
                modified.append(u if uid else seq)
            elif not silent or (view.condstore and view.info(u).modseq != before.get(u)):
                uid_part = b"UID %d " % u if uid or view.condstore else b""
                flags = b"" if silent else b"FLAGS " + format_flags(view.flags(u))
                item = view.modseq_item(u)
                self._write(b"* %d FETCH (%s%s%s)\r\n" % (
                    seq, uid_part, flags, item if flags else item.lstrip()))
        code = b"[MODIFIED %s] " % number_set(sorted(modified)) if modified else b""
        if missing:
            self.sendNegativeResponse(
                tag, b"[EXPUNGEISSUED] Some of the requested messages no longer exist."
            )
        else:
            self.sendPositiveResponse(
                tag, code + (b"Conditional STORE failed." if code else self._command
                             + b" completed."))

    for _f in (cmd_STORE,):
        _selected_only(_f)
        uid_command(_f)
    del _f
