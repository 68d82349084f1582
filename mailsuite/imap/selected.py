"""Commands of the selected state: FETCH, STORE, SEARCH, COPY, MOVE (RFC 6851), EXPUNGE,
UID EXPUNGE (RFC 4315), CLOSE, UNSELECT, and the UID forms of them all (STORE, and the
CONDSTORE hooks ``fetch_modifiers`` and ``search_result``: ``condstore.CondstoreCommands``).

A mixin of ``IMAPServer``, typed against what it uses of it (``session.Session``). ``UID X``
runs the ``cmd_X`` of any mixin marked with ``uid_command`` (SORT and THREAD add theirs). Updates
from other sessions are sent by ``IMAPServer._respond`` before each tagged reply, never an
EXPUNGE after FETCH, STORE, SEARCH, SORT or THREAD (or their UID forms: ``server._NO_EXPUNGE``);
CONTEXT's ADDTO/REMOVEFROM (context.py) and NOTIFY's events (notify.py) have their own rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, interfaces
from zope.interface import implementer

from mailsuite.imap.encode import number_set
from mailsuite.imap.fetch import (
    FetchRefused,
    Piece,
    WireSlice,
    fetch_responses,
)
from mailsuite.imap.esearch import (
    bind_saved,
    esearch_response,
    parse_return,
    run_saving,
    save,
    saved_targets,
)
from mailsuite.imap.quota import admit
from mailsuite.imap.parser import (
    SAVED,
    Cursor,
    ParseError,
    Range,
    encode_mailbox,
)
from mailsuite.imap.contextopts import check_options
from mailsuite.imap.search import SearchSyntaxError, parse_search, run_search
from mailsuite.store.interfaces import MailboxNotFound, UnknownUID

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session

    _Base = Session
else:
    _Base = object

_SELECTED = ("select",)


@implementer(interfaces.IPullProducer)
class _Streamer:
    """Writes a big FETCH response in 64 KiB chunks as the connection drains."""

    CHUNK = 65536

    def __init__(self, proto: Session, pieces: list[Piece]) -> None:
        self.proto = proto
        self.done: defer.Deferred[None] = defer.Deferred()
        self._chunks = self._generate(pieces)

    def _generate(self, pieces: list[Piece]) -> Any:
        small = b""
        for piece in pieces:
            if isinstance(piece, WireSlice):
                for chunk in piece.chunks(self.CHUNK):
                    yield small + chunk
                    small = b""
            else:
                small += piece
        if small:
            yield small

    def resumeProducing(self) -> None:
        if self.proto._lost:
            self.stopProducing()
            return
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.stopProducing()
            return
        self.proto._write(chunk)

    def stopProducing(self) -> None:
        if not self.done.called:
            with contextlib.suppress(RuntimeError):  # StringTransport: none registered any more
                self.proto.transport.unregisterProducer()
            self.done.callback(None)


def uid_command(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``cmd_X(self, tag, args, uid=False)`` handler as having a ``UID X`` form."""
    handler.imap_uid = True  # type: ignore[attr-defined]
    return handler


def _selected_only(handler: Callable[..., Any]) -> None:
    """Mark a ``cmd_*`` handler as allowed in the selected state only."""
    handler.imap_states = _SELECTED  # type: ignore[attr-defined]


class SelectedCommands(_Base):
    def _targets(self, ranges: list[Range], uid: bool) -> list[tuple[int, int]]:
        assert self.view is not None
        if ranges is SAVED:  # RFC 5182 "$"
            return saved_targets(self.view)
        try:
            return self.view.resolve(ranges, uid)
        except ValueError:
            raise ParseError("Invalid messageset") from None

    async def _stream(self, pieces: list[Piece]) -> None:
        streamer = _Streamer(self, pieces)
        self.transport.registerProducer(streamer, False)
        await streamer.done

    def cmd_UID(self, tag: bytes, args: Cursor) -> Any:
        """``UID X``: the handler ``cmd_X`` of any mixin marked with ``uid_command``, called
        with ``uid=True``."""
        args.sp()
        name = args.atom().upper().decode("ascii", "replace")
        handler = getattr(self, "cmd_" + name, None)
        if handler is None or not getattr(handler, "imap_uid", False):
            raise ParseError("unknown UID command")
        return handler(tag, args, True)

    # -- FETCH -------------------------------------------------------------------------------
    async def cmd_FETCH(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        view = self.view
        assert view is not None
        args.sp()
        ranges = args.sequence_set()
        args.sp()
        plan, keep = self.fetch_modifiers(args.rest(), uid)  # CHANGEDSINCE: condstore.py
        targets = keep(ranges, self._targets(ranges, uid))
        seen_now: set[int] = set()
        if not view.readonly and plan.sets_seen:
            live = [u for _, u in targets if not view.is_expunged(u)]
            unseen = {u for u in live if "\\Seen" not in view.info(u).flags}
            # added to the flags stored now: another session's change is not undone
            result = await view.change_flags(live, add=frozenset({"\\Seen"}))
            seen_now = {u for u in unseen if u in result}
            self._send_flags_update()
        try:
            missing = await fetch_responses(
                view, targets, plan, seen_now, self._write, lambda: self._lost, self._stream
            )
        except FetchRefused as e:  # BINARY of an unknown encoding (RFC 3516 [UNKNOWN-CTE])
            self.sendNegativeResponse(tag, e.reply)
            return
        if missing:
            self.sendNegativeResponse(
                tag, b"[EXPUNGEISSUED] Some of the requested messages no longer exist."
            )
        else:
            self.sendPositiveResponse(tag, self._command + b" completed.")

    def _send_flags_update(self) -> None:
        """FLAGS and PERMANENTFLAGS, if a keyword the client has not been told of is about to
        show in a FETCH (stored by this command, or found by it in the stored flags)."""
        assert self.view is not None
        for line in self.view.take_flags_update():
            self.sendUntaggedResponse(line)

    # -- STORE: condstore.CondstoreCommands (UNCHANGEDSINCE, MODIFIED) -----------------------

    # -- SEARCH ------------------------------------------------------------------------------
    async def cmd_SEARCH(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        view = self.view
        assert view is not None
        args.sp()
        options, text = parse_return(args.rest())  # ESEARCH (imap/esearch.py)
        if options is None and b"IMAP4REV2" in self.enabled:  # RFC 9051 6.4.4 (imap/rev2.py)
            options = [b"ALL"]
        self.check_update_tag(tag, options)  # CONTEXT (context.py)
        saving = options is not None and b"SAVE" in options
        try:
            charset, key = parse_search(text)
        except SearchSyntaxError as e:
            if saving:
                save(view, [])  # RFC 5182 2.1: a failed SAVE empties the result
            raise ParseError(str(e)) from None
        refused = self.search_charset_refused(tag, charset)  # utf8.py
        if not refused and charset not in (None, "UTF-8", "US-ASCII"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            refused = True
        if refused:
            if saving:
                save(view, [])
            return
        if options is not None:  # ESEARCH and SEARCHRES (imap/esearch.py)
            bound = bind_saved(key, view)  # "$" as before a SAVE (for CONTEXT's UPDATE)
            found = await run_saving(view, key, uid, options)
            extra = self.search_context(tag, uid, options, bound, found)
            if options != [b"SAVE"]:
                self.sendUntaggedResponse(esearch_response(tag, uid, options, found)
                                          + self._esearch_modseq(key, options, found, uid)
                                          + extra)  # CONTEXT: PARTIAL (context.py)
        else:
            found = await run_search(view, bind_saved(key, view), uid)
            self.sendUntaggedResponse(b"SEARCH" + b"".join(b" %d" % n for n in found)
                                      + self.search_result(key, found, uid))  # condstore.py
        self.sendPositiveResponse(tag, self._command + b" completed.")

    def _esearch_modseq(self, key: Any, options: list[bytes], found: list[int],
                        uid: bool) -> bytes:
        """`` MODSEQ n`` of an ESEARCH whose key used MODSEQ (RFC 7162 3.1.5, RFC 4731 3.2): the
        highest of the messages it reports: all found for ALL or COUNT, else those of MIN, MAX
        and PARTIAL's window (RFC 5267 4.4); none for a reply that reports no message."""
        reported = found
        if found and b"ALL" not in options and b"COUNT" not in options:
            reported = [n for n, asked in ((min(found), b"MIN"), (max(found), b"MAX"))
                        if asked in options]
            partial = check_options(options)
            if partial is not None:
                reported += found[partial[0] - 1 : partial[1]]
        highest = self.search_result(key, reported, uid)  # b" (MODSEQ n)", b"" if none
        return b" MODSEQ " + highest[len(b" (MODSEQ "):-1] if highest else b""

    # -- COPY / MOVE -------------------------------------------------------------------------
    async def _copy(self, tag: bytes, args: Cursor, uid: bool,
                    move: bool = False) -> tuple[list[int], bytes] | None:
        """Copy the messages; (source UIDs copied, COPYUID code) or None after a NO. A
        ``move`` is not counted against the quota (imap/quota.py): it frees what it takes."""
        view = self.view
        assert view is not None
        args.sp()
        ranges = args.sequence_set()
        args.sp()
        name = args.mailbox()
        args.end()
        targets = self._targets(ranges, uid)
        try:
            dest = await self.account.store.open(self.account.account, name)
        except MailboxNotFound:
            self.sendNegativeResponse(
                tag, b"[TRYCREATE] Mailbox doesn't exist: " + encode_mailbox(name, self.utf8_names)
            )
            return None
        copied: list[int] = []
        new_uids: list[int] = []
        missing = False
        try:
            live = [view.info(u).size for _, u in targets if not view.is_expunged(u)]
            if not move:
                await admit(self.account, sum(live), len(live))  # all or none (imap/quota.py)
            append = getattr(dest, "append_moved", dest.append) if move else dest.append
            self.recent.touch(self.account.store, self.account.account, dest)
            for _, u in targets:
                if view.is_expunged(u):
                    missing = True
                    continue
                try:
                    data = await view.mailbox.read(u)
                except UnknownUID:
                    missing = True
                    continue
                info = view.info(u)
                new_uids.append(await append(data, info.flags, info.internal_date))
                copied.append(u)
            validity = int(dest.uid_validity)
        finally:
            dest.close()
        if missing and not uid:
            self.sendNegativeResponse(
                tag, b"[EXPUNGEISSUED] Some of the requested messages no longer exist."
            )
            return None
        code = (
            b"[COPYUID %d %s %s]" % (validity, number_set(copied), number_set(new_uids))
            if copied
            else b""
        )
        return copied, code

    async def cmd_COPY(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        result = await self._copy(tag, args, uid)
        if result is not None:
            code = result[1]
            self.sendPositiveResponse(tag, (code + b" " if code else b"") + b"Copy completed.")

    async def cmd_MOVE(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        view = self.view
        assert view is not None
        if view.readonly:
            self.sendNegativeResponse(tag, b"Mailbox is read-only.")
            return
        result = await self._copy(tag, args, uid, move=True)
        if result is None:
            return
        copied, code = result
        if code:
            self.sendUntaggedResponse(b"OK " + code + b" Moved UIDs.")
        await view.expunge(copied)
        self.sendPositiveResponse(tag, b"Move completed.")

    # -- EXPUNGE, CLOSE, UNSELECT ------------------------------------------------------------
    async def cmd_EXPUNGE(self, tag: bytes, args: Cursor, uid: bool = False) -> None:
        assert self.view is not None
        within = None
        if uid:
            args.sp()
            within = {u for _, u in self._targets(args.sequence_set(), True)}
        args.end()
        if self.view.readonly:
            self.sendNegativeResponse(tag, b"Mailbox is read-only.")
            return
        await self.view.expunge_deleted(within)
        self.sendPositiveResponse(tag, self._command + b" completed.")

    async def cmd_CLOSE(self, tag: bytes, args: Cursor) -> None:
        await self._close(tag, args, True)

    async def cmd_UNSELECT(self, tag: bytes, args: Cursor) -> None:
        await self._close(tag, args, False)

    async def _close(self, tag: bytes, args: Cursor, expunge: bool) -> None:
        args.end()
        view = self.view
        assert view is not None
        if expunge and not view.readonly:
            await view.expunge_deleted()  # CLOSE sends no EXPUNGE responses
        self._close_view()
        self.sendPositiveResponse(tag, (b"Close" if expunge else b"Unselect") + b" completed.")

    for _f in (cmd_UID, cmd_FETCH, cmd_SEARCH, cmd_COPY, cmd_MOVE, cmd_EXPUNGE,
               cmd_CLOSE, cmd_UNSELECT):
        _selected_only(_f)
    for _f in (cmd_FETCH, cmd_SEARCH, cmd_COPY, cmd_MOVE, cmd_EXPUNGE):
        uid_command(_f)
    del _f
