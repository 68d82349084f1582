"""One session's view of a selected mailbox (the avatar that opens it: ``account.ImapAccount``).

Many sessions may have the same mailbox open: they share the store's ``IMailbox``. Each session
gets its own ``ImapMailboxView``: its own sequence-number -> UID map, its own idea of the flags
it has told its client about, and a queue of changes (from other sessions, SMTP delivery, POP3
or the disk) that the server turns into ``EXISTS`` / ``EXPUNGE`` / ``FETCH (FLAGS ...)`` at the
points RFC 3501 allows (``take_updates``).

``\\Recent`` follows RFC 3501: a message is recent in the first session told of it
(``recent.RecentTracker``, which the server's sessions share).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from datetime import datetime, UTC
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from operator import attrgetter
from typing import Any

from twisted.internet import defer

from mailsuite.accounts import Account
from mailsuite.imap.encode import format_flags, number_set
from mailsuite.imap.recent import RecentTracker
from mailsuite.imap.viewmodseq import ModseqView
from mailsuite.store import entrytable as et
from mailsuite.store.entrytable import Entry, EntryTable
from mailsuite.store.interfaces import (
    SYSTEM_FLAGS,
    Changes,
    IMailbox,
    MessageInfo,
)

_UID = attrgetter("uid")
_EPOCH = datetime.fromtimestamp(0, UTC)


class ImapMailboxView(ModseqView):
    """One session's view of one open store mailbox.

    ``readonly`` is True after EXAMINE. ``on_change`` (optional) is called after each change is
    queued, so that a session in IDLE can flush at once. ``recent`` (with ``account`` and
    ``store``) is the tracker the server's sessions share; without it every new message told to
    this view is recent in it.

    The view shares the store's list of messages instead of copying it (2,000 sessions on a
    100,000-message INBOX): its messages are the first ``_n`` of ``_base`` (the store only ever
    appends to a list it published), then ``_tail`` (new messages told to this client while it
    still owes EXPUNGEs), with ``_over`` holding the flags told to this client where they differ.
    Once every change is told the view takes the store's current list again (``_rebase``).
    """

    saved_search: frozenset[int] = frozenset()  # SEARCHRES (RFC 5182), UIDs: imap/esearch.py
    rev2 = False  # IMAP4rev2 (imap/rev2.py): no RECENT, UID in unsolicited FETCH

    def __init__(
        self, mailbox: IMailbox, readonly: bool, account: Account | None = None, store: Any = None,
        recent: RecentTracker | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.account = account
        self.store = store
        self._tracker = recent if account is not None else None
        self.readonly = readonly
        self.name: str = mailbox.name
        self.on_change: Callable[[], None] | None = None
        self._base: Sequence[Any] = mailbox.messages
        self._last: tuple[int, Any] = (-1, None)  # the row _at read last (of this _base)
        self._n = len(self._base)
        self._tail: list[Any] = []
        self._over: dict[int, MessageInfo] = {}
        self._hint = (0, -1)  # (uid, position) of the last lookup
        self._recent: set[int] = set()
        if self._tracker is not None and account is not None:
            mark = self._tracker.mark(store, account, mailbox)
            start = et.position(self._base, mark, 0, self._n)
            new = et.uids_between(self._base, start, self._n)
            self._recent = self._tracker.claim(store, account, mailbox, new, peek=readonly)
        self._expunged: set[int] = set()  # gone from the store, not yet told to the client
        self._added: list[MessageInfo] = []
        self._flag_changes: dict[int, frozenset[str]] = {}
        self._keywords = set(self.keywords())  # the keywords FLAGS has named to the client
        self._keywords_grew = False  # since FLAGS was last sent
        self._closed = False
        self.condstore = False  # RFC 7162: UID and MODSEQ in unsolicited FETCH (condstore.py)
        self.qresync = False  # and VANISHED for EXPUNGE (qresync.py)
        mailbox.add_listener(self._changed)

    # -- the rows of this view ---------------------------------------------------------------
    def _at(self, pos: int) -> Any:
        if pos >= self._n:
            return self._tail[pos - self._n]
        last = self._last
        if last[0] == pos:  # FETCH's items each ask for the message: one entry made for all
            return last[1]
        found = self._base[pos]
        self._last = (pos, found)
        return found

    def _shows(self, rows: Sequence[Any], n: int) -> None:
        """The view's rows are the first ``n`` of ``rows`` now (no tail)."""
        self._base, self._n, self._tail, self._last = rows, n, [], (-1, None)

    def _uid_at(self, pos: int) -> int:
        return et.uid_at(self._base, pos) if pos < self._n else int(self._tail[pos - self._n].uid)

    def _last_uid(self) -> int:
        if self._tail:
            return int(self._tail[-1].uid)
        return et.uid_at(self._base, self._n - 1) if self._n else 0

    def _lower(self, uid: int) -> int:
        """The position of the first message with a UID >= ``uid``."""
        i = et.position(self._base, uid, 0, self._n)
        if i < self._n or not self._tail:
            return i
        return self._n + bisect_left(self._tail, uid, key=_UID)

    def _find(self, uid: int) -> int:
        """The position of ``uid`` in this view, -1 if it has none."""
        last, i = self._hint
        if last == uid:
            return i
        i += 1  # FETCH, SEARCH and STORE go through the messages in order: try the next one
        if 0 < i < self._n and et.uid_at(self._base, i) == uid:
            self._hint = (uid, i)
            return i
        i = self._lower(uid)
        if i >= self.count() or self._uid_at(i) != uid:
            return -1
        self._hint = (uid, i)
        return i

    def _uids_between(self, lo: int, hi: int) -> list[int]:
        """UIDs at positions lo..hi-1."""
        out = et.uids_between(self._base, lo, min(hi, self._n)) if lo < self._n else []
        if hi > self._n:
            out += [m.uid for m in self._tail[max(lo - self._n, 0) : hi - self._n]]
        return out

    def _rebase(self) -> None:
        """Everything is told: the view is the store's current list again, if it agrees."""
        messages = self.mailbox.messages
        count = self.count()
        if len(messages) == count and (not count or messages[-1].uid == self._last_uid()):
            self._shows(messages, count)
            self._over, self._hint = {}, (0, -1)

    # -- the store listener ----------------------------------------------------------------
    def _changed(self, changes: Changes) -> None:
        self._expunged.update(changes.expunged)
        top = max(self._last_uid(), self._added[-1].uid if self._added else 0)
        for info in changes.added:  # new UIDs are always above the ones already known
            if info.uid > top:
                self._added.append(info)
                top = info.uid
        for uid, flags in changes.flags.items():
            self._flag_changes[uid] = frozenset(flags)
        if self.on_change is not None and changes:
            self.on_change()

    # -- what the session sees -------------------------------------------------------------
    @property
    def uid_validity(self) -> int:
        return int(self.mailbox.uid_validity)

    @property
    def uid_next(self) -> int:
        return int(self.mailbox.uid_next)

    def count(self) -> int:
        return self._n + len(self._tail)

    def uids(self) -> list[int]:
        """UIDs in sequence order (index 0 is sequence number 1)."""
        return self._uids_between(0, self.count())

    def each_row(self) -> Iterator[Any]:
        """``rows`` made one at a time (a store's table of entries is never made whole)."""
        rows = chain(islice(self._base, self._n), self._tail)
        if self._over:
            over = self._over
            return (over.get(m.uid, m) for m in rows)
        return rows

    def each_basic(self, when: Callable[[Any], int]) -> Iterator[tuple[int, int, int]]:
        """(UID, internal date as ``when`` gives it, size) of each row, from the store's
        columns when it keeps them (these never change for a UID: no flags needed)."""
        base, n = self._base, self._n
        if isinstance(base, EntryTable):
            head: Iterable[tuple[int, int, int]] = zip(base.uid[:n], base.date[:n],
                                                       base.size[:n], strict=True)
        else:
            head = ((m.uid, when(m), m.size) for m in islice(base, n))
        return chain(head, ((m.uid, when(m), m.size) for m in self._tail))

    def rows(self) -> list[Any]:
        """Every message as this session knows it (its flags, ``info``), in sequence order:
        one pass, no look-up per UID (SEARCH over 100,000 messages)."""
        return list(self.each_row())

    def info(self, uid: int) -> MessageInfo:
        over = self._over.get(uid)
        if over is not None:
            return over
        pos = self._find(uid)
        if pos < 0:
            raise KeyError(uid)
        return self._at(pos)  # type: ignore[no-any-return]

    def infos(self, uids: list[int]) -> Sequence[Any]:
        """``info`` of each of ``uids`` (ascending): a slice of the store's table when they
        are a span of it that this session sees as the store does (no entry made of each)."""
        base = self._base
        if uids and type(base) is EntryTable and not self._over:
            lo = self._find(uids[0])
            hi = lo + len(uids)
            if lo >= 0 and hi <= self._n and base.uid[lo:hi] == array("I", uids):
                return base[lo:hi]
        return list(map(self.info, uids))

    def is_expunged(self, uid: int) -> bool:
        """Gone from the store but still shown to this client (its EXPUNGE is pending)."""
        return uid in self._expunged

    def pending_expunges(self) -> set[int]:
        """The UIDs whose EXPUNGE is pending (CONTEXT's REMOVEFROM goes first: context.py)."""
        return self._expunged

    def flags(self, uid: int) -> frozenset[str]:
        """The flags as this session knows them, with ``\\Recent`` when it is recent here."""
        flags = self.info(uid).flags
        return flags | {"\\Recent"} if uid in self._recent else flags

    def recent_count(self) -> int:
        return len(self._recent)

    def is_recent(self, uid: int) -> bool:
        return uid in self._recent

    def _as_store(self) -> bool:
        """This view shows exactly the store's current state (as right after SELECT)."""
        return self._base is self.mailbox.messages and self._n == len(self._base) and not (
            self._tail or self._over
        )

    def first_unseen(self) -> int | None:
        if self._as_store():
            uid = self.mailbox.first_unseen()
            return None if uid is None else self._find(uid) + 1
        for pos in range(self.count()):
            m = self._at(pos)
            if "\\Seen" not in self.info(m.uid).flags:
                return pos + 1
        return None

    def keywords(self) -> list[str]:
        if self._as_store():
            return sorted(self.mailbox.keywords())
        found: set[str] = set()
        for pos in range(self.count()):
            found.update(f for f in self.info(self._at(pos).uid).flags if f not in SYSTEM_FLAGS)
        return sorted(found)

    # -- FLAGS: the keywords the client has been told of --------------------------------------
    def flags_responses(self) -> list[bytes]:
        """``FLAGS (...)`` and ``OK [PERMANENTFLAGS (...)]`` (``()`` when read-only) for the
        system flags and every keyword told so far, as SELECT sends them."""
        flags = format_flags(SYSTEM_FLAGS | self._keywords)
        permanent = b"()" if self.readonly else flags[:-1] + b" \\*)"
        self._keywords_grew = False
        return [b"FLAGS " + flags, b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted."]

    def take_flags_update(self) -> list[bytes]:
        """The FLAGS responses when a keyword has come to this view since they were last sent
        (RFC 3501 7.2.6): to be sent before any FETCH that shows it."""
        return self.flags_responses() if self._keywords_grew else []

    def _learn(self, flags: Iterable[str]) -> None:
        """These flags are about to be shown to the client: note the keywords FLAGS lacks."""
        for flag in flags:
            if flag not in self._keywords and flag not in SYSTEM_FLAGS and flag != "\\Recent":
                self._keywords.add(flag)
                self._keywords_grew = True

    def _told_flags(self, m: Any, flags: frozenset[str]) -> None:
        """``m`` is shown with the ``flags`` its client was told; its store flags are owed."""
        self._over[m.uid] = MessageInfo(m.uid, flags, m.internal_date, m.size, m.modseq, m.saved)
        self._flag_changes[m.uid] = m.flags

    def told_keywords(self) -> set[str]:
        """The keywords FLAGS has named to the client."""
        return set(self._keywords)

    def resume(self, told: list[tuple[int, frozenset[str]]], recent: set[int],
               keywords: set[str]) -> None:
        """Continue a session whose client was told ``told`` (UIDs in sequence order and
        their flags), ``recent`` and ``keywords`` (a thawed hibernation, imap/hibernate.py):
        right after the view is made, what changed since then becomes the updates owed."""
        base, n = self._base, self._n
        present = et.uids_between(base, 0, n)
        top = told[-1][0] if told else 0
        self._added = [base[k] for k in range(et.position(base, top + 1, 0, n), n)]
        if [uid for uid, _ in told] == present[:len(told)]:
            # nothing expunged meanwhile (the usual case): the store's rows stay this view's,
            # no entry made but those whose flags changed
            for k, ((_, flags), now) in enumerate(zip(told, et.flag_sets(base), strict=False)):
                if now != flags:
                    self._told_flags(base[k], flags)
            self._n = len(told)
        else:
            current = dict(zip(present, range(n), strict=True))
            rows: list[Any] = []
            for uid, flags in told:
                at = current.get(uid)
                if at is None:  # expunged meanwhile: shown until its EXPUNGE is sent
                    rows.append(MessageInfo(uid, flags, _EPOCH, 0))
                    self._expunged.add(uid)
                    continue
                rows.append(base[at])
                if rows[-1].flags != flags:
                    self._told_flags(rows[-1], flags)
            self._shows(rows, len(rows))
        self._tail, self._hint = [], (0, -1)
        # recent as told, and what this view claimed of the mail since (its EXISTS is owed)
        self._recent = (recent & set(present)) | {u for u in self._recent if u > top}
        self._keywords = set(keywords)

    # -- sequence sets -----------------------------------------------------------------------
    def resolve(
        self, ranges: list[tuple[int | None, int | None]], uid: bool
    ) -> list[tuple[int, int]]:
        """``[(seq, uid)]`` in ascending order for a parsed sequence set (``None`` is ``*``).

        For sequence numbers a number outside 1..count raises ``ValueError`` (the client gets
        BAD); for UIDs, numbers that match nothing are simply left out (RFC 3501 6.4.8).
        """
        count = self.count()
        spans: list[tuple[int, int]] = []  # positions [lo, hi)
        if uid:  # UIDs ascend with sequence numbers: each range is a slice found by bisection
            top = self._last_uid()
            for lo, hi in ranges:
                a, b = top if lo is None else lo, top if hi is None else hi
                a, b = min(a, b), max(a, b)
                i = self._lower(a)
                if a == b:  # one UID (a client fetching one message): one bisection
                    spans.append((i, i + 1 if i < count and self._uid_at(i) == a else i))
                else:
                    spans.append((i, self._lower(b + 1)))
        else:
            for lo, hi in ranges:
                a, b = count if lo is None else lo, count if hi is None else hi
                a, b = min(a, b), max(a, b)
                if a < 1 or b > count:
                    raise ValueError("invalid message sequence number")
                spans.append((a - 1, b))
        out: list[tuple[int, int]] = []
        end = 0
        for lo, hi in sorted(spans):
            lo = max(lo, end)
            if lo < hi:
                out.extend(zip(range(lo + 1, hi + 1), self._uids_between(lo, hi), strict=False))
                end = hi
        if out:  # the FETCH/STORE that asked looks them up next, from the first
            self._hint = (out[0][1], out[0][0] - 1)
        return out

    # -- changes made by this session --------------------------------------------------------
    def set_flags(self, changes: dict[int, frozenset[str]]) -> defer.Deferred[None]:
        """Persist new flags (``\\Recent`` is stripped) and remember them as told to the client."""
        clean = {
            uid: frozenset(f for f in flags if f != "\\Recent") for uid, flags in changes.items()
        }
        clean = {uid: flags for uid, flags in clean.items() if uid not in self._expunged}
        for uid, flags in clean.items():
            old = self.info(uid)
            self._learn(flags)
            self._over[uid] = self._told(uid, flags, old)
            self._flag_changes.pop(uid, None)
        if not clean:
            return defer.succeed(None)
        return self.mailbox.set_flags(clean)

    def change_flags(
        self,
        uids: list[int],
        add: frozenset[str] = frozenset(),
        remove: frozenset[str] = frozenset(),
        replace: frozenset[str] | None = None,
    ) -> defer.Deferred[dict[int, frozenset[str]]]:
        """STORE / implicit ``\\Seen``: the store applies the change to the flags stored now
        (not to this session's possibly stale copy); the resulting flags become what this
        session has been told. Fires with {uid: new flags} of the messages still present."""
        strip = frozenset({"\\Recent"})
        uids = [u for u in uids if u not in self._expunged]
        if not uids:
            return defer.succeed({})
        d = self.mailbox.change_flags(
            uids, frozenset(add) - strip, frozenset(remove) - strip,
            None if replace is None else frozenset(replace) - strip,
        )

        def told(result: dict[int, frozenset[str]]) -> dict[int, frozenset[str]]:
            for uid, flags in result.items():
                if uid in self._expunged or self._find(uid) < 0:
                    continue
                self._flag_changes.pop(uid, None)
                self._learn(flags)
                old = self.info(uid)
                if old.flags != flags or old.modseq != self.store_modseq(uid, old):
                    self._over[uid] = self._told(uid, flags, old)
            return result

        return d.addCallback(told)

    def expunge_deleted(self, within: set[int] | None = None) -> defer.Deferred[list[int]]:
        """Remove every message marked ``\\Deleted`` (only UIDs ``within``, for UID EXPUNGE);
        the EXPUNGEs come from ``take_updates``."""
        doomed = [
            u for u, flags in self._flag_rows()
            if "\\Deleted" in flags and u not in self._expunged and (within is None or u in within)
        ]
        return self.expunge(doomed)

    def plain_rows(self) -> Iterator[tuple[int, frozenset[str], int]]:
        """(UID, flags as this session knows them, size) of each row (SEARCH by flags)."""
        base, n = self._base, self._n
        sizes = chain(et.sizes_of(base)[:n], (m.size for m in self._tail))
        return ((uid, flags, size) for (uid, flags), size in zip(self._flag_rows(), sizes,
                                                                 strict=True))

    def _flag_rows(self) -> Iterator[tuple[int, frozenset[str]]]:
        """(UID, flags as this session knows them) of each row, from the store's columns."""
        base, n, over = self._base, self._n, self._over
        rows = chain(zip(et.uids_between(base, 0, n), et.flag_sets(base)[:n], strict=True),
                     ((m.uid, m.flags) for m in self._tail))
        if not over:
            return rows
        return ((u, over[u].flags if u in over else flags) for u, flags in rows)

    def expunge(self, doomed: list[int]) -> defer.Deferred[list[int]]:
        """Remove these messages (MOVE); the EXPUNGEs come from ``take_updates``."""
        if not doomed:
            return defer.succeed([])
        d = self.mailbox.expunge(doomed)

        def removed(uids: list[int]) -> list[int]:
            self._expunged.update(uids)
            return uids

        return d.addCallback(removed)

    # -- turning queued changes into untagged responses -------------------------------------
    def take_updates(self, allow_expunge: bool = True) -> list[bytes]:
        """The untagged responses owed to the client, applying them to this view.

        With ``allow_expunge`` False (after FETCH, STORE, SEARCH) expunges stay queued, so the
        sequence numbers the client knows stay valid. FLAGS comes first when a keyword is new.
        """
        if not (self._expunged or self._added or self._flag_changes):
            return self.take_flags_update()
        told = {u: self.info(u).flags for u in self._flag_changes if self._find(u) >= 0}
        lines: list[bytes] = []
        new: list[int] = []
        adopted = False
        if allow_expunge and self._expunged:
            lines, new, adopted = self._take_expunges()
        if self._added:
            top = self._last_uid()
            for info in self._added:
                if info.uid > top and info.uid not in self._expunged:
                    self._learn(info.flags)
                    self._tail.append(info)
                    top = info.uid
                    new.append(info.uid)
            self._added = []
        if new:
            if self._tracker is not None and self.account is not None:
                self._recent |= self._tracker.claim(self.store, self.account, self.mailbox, new,
                                                    peek=self.readonly)
            else:
                self._recent.update(new)
            lines.append(b"%d EXISTS" % self.count())
            lines += [] if self.rev2 else [b"%d RECENT" % len(self._recent)]
        for uid, flags in sorted(self._flag_changes.items()):
            if uid in self._expunged:
                continue
            pos = self._find(uid)
            if pos < 0:
                continue
            self._learn(flags)
            if not adopted and self.info(uid).flags != flags:
                old = self.info(uid)
                self._over[uid] = self._told(uid, flags, old)
            if uid in told and told[uid] != flags:
                lines.append(b"%d FETCH (%sFLAGS %s%s)" % (pos + 1, b"UID %d " % uid if
                             self.condstore or self.rev2 else b"", format_flags(self.flags(uid)),
                             self.modseq_item(uid)))
        self._flag_changes = {}
        if not self._expunged:
            self._rebase()
        return self.take_flags_update() + lines

    def _take_expunges(self) -> tuple[list[bytes], list[int], bool]:
        """The EXPUNGEs owed, applied to this view: (their lines, the UIDs of new mail taken in
        with them, whether the view now is the store's current list)."""
        gone = sorted(p for p in map(self._find, self._expunged) if p >= 0)
        lines = [b"%d EXPUNGE" % (p - k + 1) for k, p in enumerate(gone)]
        if self.qresync and gone:  # RFC 7162 3.2.10
            lines = [b"VANISHED " + number_set(sorted(self._at(p).uid for p in gone))]
        for uid in [self._at(p).uid for p in gone]:
            self._over.pop(uid, None)
            self._recent.discard(uid)
            self._flag_changes.pop(uid, None)
        expunged, self._expunged = self._expunged, set()
        self._added = [m for m in self._added if m.uid not in expunged]
        new: list[int] = []
        adopted = False
        if gone:
            adopted = self._adopt(gone)
            if adopted:
                for info in self._added:
                    self._learn(info.flags)
                new = [m.uid for m in self._added]
                self._added = []
            else:
                self._drop(gone)
            self._hint = (0, -1)
        return lines, new, adopted

    def _drop(self, gone: list[int]) -> None:
        """The rows at positions ``gone`` dropped (their EXPUNGEs told): a copy of the
        store's table without them when the rows are one (no entry made of each)."""
        base, n, doomed = self._base, self._n, set(gone)
        if isinstance(base, EntryTable) and all(type(m) is Entry for m in self._tail):
            rows = base[:n].without({et.uid_at(base, p) for p in doomed if p < n})
            rows.extend(m for p, m in enumerate(self._tail, n) if p not in doomed)
            self._shows(rows, len(rows))
        else:
            kept = [self._at(p) for p in range(self.count()) if p not in doomed]
            self._shows(kept, len(kept))

    def _adopt(self, gone: list[int]) -> bool:
        """After the EXPUNGEs of positions ``gone``, with every change told: take the store's
        current list as it is (no copy of this view) when it holds what this view now shows."""
        messages = self.mailbox.messages
        count = self.count() - len(gone) + len(self._added)
        if len(messages) != count:
            return False
        if self._added:
            last = self._added[-1].uid
        else:
            doomed, pos = set(gone), self.count() - 1
            while pos in doomed:
                pos -= 1
            last = self._at(pos).uid if pos >= 0 else 0
        if count and messages[-1].uid != last:
            return False
        self._shows(messages, count)
        self._over = {}
        return True

    def close(self) -> None:
        """Unregister from the store mailbox and release it (idempotent)."""
        if not self._closed:
            self._closed = True
            self.mailbox.remove_listener(self._changed)
            self.mailbox.close()
