"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 sections 4 and 5): the RETURN options UPDATE,
CONTEXT and PARTIAL of SEARCH and SORT, CANCELUPDATE, and the ``ADDTO`` / ``REMOVEFROM``
updates of the ESEARCH response.

A SEARCH or SORT with ``RETURN (UPDATE)`` leaves a ``Context`` on the session: the key (with
``$`` bound), the result as UIDs (for SORT in the sort order) and the messages changed since.
A listener on the store mailbox marks the messages added or whose flags changed; only those are
matched again (``_evaluate``, reading the headers or bodies of those alone when the key needs
them). Updates go out with the other untagged updates (``flush_updates``, at the end of every
command: unlike EXPUNGE, RFC 5267 4.3.2 lets them go at any time; a tagged reply waits for
the evaluation its command started, ``context_running``, so the updates a STORE causes come
before its OK even when headers must be read), during IDLE at once, and the
``REMOVEFROM`` of an expunged message also between commands: always before its EXPUNGE (its
number still valid, 4.3.4), an ADDTO after the EXISTS (4.3.3). For SEARCH the
position is 0, for SORT the place in the sorted result where the message goes or was.

At most ``MAX_CONTEXTS`` contexts: beyond, ``[NOUPDATE "tag"]`` (the result is still sent).
A new SELECT, EXAMINE, CLOSE or UNSELECT ends them all; a session with one does not hibernate
(``hibernate.hibernatable``): the snapshot has no room for it.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.imap.contextopts import check_options
from mailsuite.imap.encode import number_set
from mailsuite.imap.message import split_message
from mailsuite.imap.parser import MAX_NESTING, Cursor, ParseError
from mailsuite.imap.search import Candidate, matches, needs, prepare_keys
from mailsuite.imap.session import states
from mailsuite.store.interfaces import Changes, UnknownUID

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

MAX_CONTEXTS = 8
_RECENT = frozenset({"\\Recent"})


def partial_data(numbers: list[int], low: int, high: int) -> bytes:
    """`` PARTIAL (low:high set)`` of the result's positions low..high (``NIL`` if none)."""
    window = numbers[low - 1 : high]
    return b" PARTIAL (%d:%d %s)" % (low, high, number_set(window) if window else b"NIL")


def bind_sequences(key: tuple[Any, ...], view: Any, depth: int = 0) -> tuple[Any, ...]:
    """The key with each sequence set made the UIDs it names now: RFC 5267 4.3 (and the
    errata of RFC 3501) evaluate sequence numbers when the command is received."""
    name = key[0]
    if name == "SEQ":
        uids = view.uids()
        top = len(uids)
        hits: set[int] = set()
        for lo, hi in key[1]:
            a, b = sorted((top if lo is None else lo, top if hi is None else hi))
            hits.update(uids[max(a, 1) - 1 : min(b, top)])
        return ("$", frozenset(hits))
    if depth > MAX_NESTING + 1:
        return key
    if name == "AND":
        return ("AND", [bind_sequences(k, view, depth + 1) for k in key[1]])
    if name == "NOT":
        return ("NOT", bind_sequences(key[1], view, depth + 1))
    if name == "OR":
        return ("OR", bind_sequences(key[1], view, depth + 1),
                bind_sequences(key[2], view, depth + 1))
    return key


def _shown(view: Any, uid: int) -> bool:
    try:
        view.info(uid)
    except KeyError:
        return False
    return True


def _quoted(tag: bytes) -> bytes:
    return b'"' + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@dataclass
class Context:
    """One UPDATE context: the result as UIDs, in the order the client keeps it."""

    tag: bytes
    uid: bool
    key: tuple[Any, ...]
    view: Any
    result: list[int]
    sort: Any = None  # SORT: (sort keys, sort_records, {UID: SortRecord}); None for SEARCH
    dirty: set[int] = field(default_factory=set)  # added or flags changed since last matched
    matched: dict[int, bool] | None = None  # an evaluation's answers, not yet told
    running: bool = False
    failed: bool = False  # a store error while matching: NOUPDATE, and the context ends

    def head(self) -> bytes:
        return b"ESEARCH (TAG " + _quoted(self.tag) + b")" + (b" UID" if self.uid else b"")


async def _evaluate(view: Any, key: tuple[Any, ...], uids: list[int]) -> dict[int, bool]:
    """Whether each of these messages (still in the view) matches the key now."""
    await prepare_keys(view, key)  # what keys like THREADID look up first (as run_search)
    need = needs(key)
    all_uids = view.uids()
    count = len(all_uids)
    max_uid = all_uids[-1] if all_uids else 0
    wanted = [u for u in uids if not view.is_expunged(u)]
    headers = await view.mailbox.read_headers(wanted) if need == "header" and wanted else {}
    out: dict[int, bool] = {}
    for u in wanted:
        seq = bisect_left(all_uids, u) + 1
        if seq > count or all_uids[seq - 1] != u:
            continue
        info = view.info(u)
        flags = info.flags | _RECENT if view.is_recent(u) else info.flags
        c = Candidate(seq, u, flags, info, info.size, count, max_uid, view=view)
        try:
            if need == "body":
                c.raw = await view.mailbox.read(u)
                c.header = split_message(c.raw)[0]
            elif need == "header":
                c.header = headers[u]
        except (UnknownUID, KeyError):
            continue
        out[u] = matches(key, c)
    return out


class ContextCommands(_Base):
    """RFC 5267 CONTEXT=SEARCH and CONTEXT=SORT for ``IMAPServer`` (with ``SortCommands``)."""

    _idle_tag: bytes | None  # IdleCommands'
    _in_flight: bool  # IMAPServer's: a command awaits its tagged reply
    _contexts: dict[bytes, Context] | None = None
    _context_listener: Any = None

    def own_capabilities(self) -> dict[bytes, Any]:
        return dict.fromkeys((b"CONTEXT=SEARCH", b"CONTEXT=SORT"))

    # -- from SEARCH and SORT ----------------------------------------------------------------
    def check_update_tag(self, tag: bytes, options: list[bytes] | None) -> None:
        """Before the search runs: UPDATE with the tag of a live context is BAD, and has no
        effect (RFC 5267 4.3)."""
        if options and b"UPDATE" in options and tag in (self._contexts or {}):
            raise ParseError("Tag reuse: an UPDATE context has this tag")

    def search_context(self, tag: bytes, uid: bool, options: list[bytes], key: Any,
                       numbers: list[int], sort: Any = None) -> bytes:
        """After a SEARCH or SORT with RETURN options (``numbers`` as it reports them): the
        PARTIAL data for its ESEARCH response; an UPDATE context kept, or NOUPDATE."""
        partial = check_options(options)
        if b"UPDATE" in options:
            self._add_context(tag, uid, bind_sequences(key, self.view), numbers, sort)
        return partial_data(numbers, *partial) if partial else b""

    def _add_context(self, tag: bytes, uid: bool, key: Any, numbers: list[int],
                     sort: Any) -> None:
        view = self.view
        assert view is not None
        contexts = self._live_contexts()
        if len(contexts) >= MAX_CONTEXTS:
            self.sendUntaggedResponse(b"NO [NOUPDATE " + _quoted(tag) + b"] Too many contexts")
            return
        if not uid:
            uids = view.uids()
            numbers = [uids[n - 1] for n in numbers]
        contexts[tag] = Context(tag, uid, key, view, numbers, sort)
        if self._context_listener is None:
            self._context_listener = (view.mailbox, self._context_changed)
            view.mailbox.add_listener(self._context_changed)

    def _live_contexts(self) -> dict[bytes, Context]:
        """The contexts of the selected view (``context_end`` ends them with it)."""
        if not self._contexts:
            self.context_end()
        self._contexts = self._contexts or {}
        return self._contexts

    def context_end(self) -> None:
        """No more contexts: the mailbox is let go (SELECT, CLOSE, LOGOUT, a lost connection)
        or the last one was cancelled."""
        self._contexts = None
        if self._context_listener is not None:
            mailbox, listener = self._context_listener
            self._context_listener = None
            mailbox.remove_listener(listener)

    def _context_changed(self, changes: Changes) -> None:
        """Mark what to match again; in IDLE send the updates now, between commands the
        REMOVEFROM of expunged messages (RFC 5267 4.3.4: their numbers hold till EXPUNGE)."""
        touched = [m.uid for m in changes.added] + list(changes.flags)
        for context in (self._contexts or {}).values():
            context.dirty.update(touched)
        if not self._contexts or getattr(self, "_lost", False):
            return
        if self._idle_tag is not None:
            self.flush_updates()
        elif changes.expunged and not self._in_flight:
            for line in self.context_before():
                self.sendLine(b"* " + line)

    @states("select")
    def cmd_CANCELUPDATE(self, tag: bytes, args: Cursor) -> None:
        tags = []
        while True:
            args.sp()
            tags.append(bytes(args.string()))
            if args.at_end():
                break
        contexts = self._live_contexts()
        for t in tags:  # a tag with no context (refused with NOUPDATE, say) has none to end
            contexts.pop(t, None)
        if not contexts:
            self.context_end()
        self.sendPositiveResponse(tag, b"CANCELUPDATE completed.")

    # -- the updates (from flush_updates) ------------------------------------------------------
    def context_running(self) -> bool:
        """An evaluation started by ``context_after`` still runs: the tagged reply waits for
        ``context_settled`` (server.py), so the ADDTO / REMOVEFROM a command caused come before
        its tagged OK also when the key needs headers or bodies (a flags key is answered at
        once). RFC 5267 4.3 lets them come later, but a client that sends nothing more would
        never get them."""
        return any(c.running for c in (self._contexts or {}).values())

    def context_settled(self) -> None:
        """An evaluation ended: the held tagged reply goes once none runs (server.py)."""
        if not self.context_running():
            self.release_reply()

    def context_before(self) -> list[bytes]:
        """REMOVEFROM of the messages about to be told expunged, while their numbers hold."""
        if not self._contexts or self.view is None or not self.view.pending_expunges():
            return []
        pending = self.view.pending_expunges()
        lines = []
        for context in self._live_contexts().values():
            gone = pending & set(context.result)
            if gone:
                lines.append(context.head() + self._changes(context, [], gone))
        return lines

    def context_after(self) -> list[bytes]:
        """ADDTO / REMOVEFROM of what an evaluation found; a new evaluation started."""
        if not self._contexts or self.view is None:
            return []
        lines = []
        contexts = self._live_contexts()
        for context in list(contexts.values()):
            if context.dirty and not context.running:
                self._start(context)  # answered at once when the flags are enough
            if context.failed:  # RFC 5267 4.3.1: the server cannot go on
                del contexts[context.tag]
                lines.append(b"NO [NOUPDATE " + _quoted(context.tag) + b"] Updates stopped")
            elif context.matched is not None:
                line = self._apply(context)
                if line:
                    lines.append(context.head() + line)
        if not contexts:
            self.context_end()
        return lines

    def _start(self, context: Context) -> None:
        uids, context.dirty = sorted(context.dirty), set()
        context.running = True

        def done(matched: dict[int, bool]) -> None:
            context.running = False
            if context.matched is not None:
                matched = {**context.matched, **matched}
            context.matched = matched
            if (not getattr(self, "_lost", False) and self._contexts
                    and self._contexts.get(context.tag) is context and self._idle_tag is not None):
                self.flush_updates()
            self.context_settled()

        def failed(failure: Any) -> None:
            context.running = False
            context.failed = True
            log.failure("CONTEXT update failed", failure)
            if not getattr(self, "_lost", False) and self._idle_tag is not None:
                self.flush_updates()
            self.context_settled()

        defer.ensureDeferred(self._matching(context, uids)).addCallbacks(done, failed)

    async def _matching(self, context: Context, uids: list[int]) -> dict[int, bool]:
        matched = await _evaluate(context.view, context.key, uids)
        if context.sort is not None:
            from mailsuite.imap.sort import key_groups
            from mailsuite.imap.sortkeys import records
            groups = key_groups(context.sort[0])  # only the keys it sorts by: no header read
            context.sort = (*context.sort[:2], {rec.uid: rec for _, rec in
                                                await records(context.view, groups)})
        return matched

    def _apply(self, context: Context) -> bytes:
        matched, context.matched = context.matched or {}, None
        present = set(context.result)
        removed = {u for u, yes in matched.items() if not yes and u in present}
        view = self.view
        assert view is not None
        added = [u for u, yes in matched.items() if yes and u not in present and _shown(view, u)
                 and not view.is_expunged(u)]  # expunged since it was matched: not now
        if not (removed or added):
            return b""
        return self._changes(context, added, removed)

    def _changes(self, context: Context, added: list[int], removed: set[int]) -> bytes:
        """The ADDTO / REMOVEFROM data making the client's result the new one, applied to
        ``context.result``."""
        view = self.view
        assert view is not None
        uids = view.uids()

        def number(u: int) -> int:
            return u if context.uid else bisect_left(uids, u) + 1

        out = b""
        if context.sort is None:
            if removed:
                out += b" REMOVEFROM (0 %s)" % number_set(sorted(map(number, removed)))
            context.result = sorted((set(context.result) - removed) | set(added))
            if added:
                out += b" ADDTO (0 %s)" % number_set(sorted(map(number, added)))
            return out
        for pos in sorted((i for i, u in enumerate(context.result) if u in removed),
                          reverse=True):
            out += b" REMOVEFROM (%d %d)" % (pos + 1, number(context.result[pos]))
        kept = [u for u in context.result if u not in removed]
        keys, sort_records, by_uid = context.sort
        new = [u for u in added if u in by_uid]
        context.dirty.update(u for u in added if u not in by_uid)  # read again next time
        if any(u not in by_uid for u in kept):  # the records are older than the result
            context.dirty.update(new)
            context.result = kept
            return out
        ordered = sort_records([(bisect_left(uids, u) + 1, by_uid[u]) for u in kept + new
                                if u in by_uid], keys)
        context.result = [rec.uid for _, rec in ordered]
        fresh = set(new)
        for pos, u in enumerate(context.result):
            if u in fresh:
                out += b" ADDTO (%d %d)" % (pos + 1, number(u))
        return out
