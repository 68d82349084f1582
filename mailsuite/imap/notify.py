"""NOTIFY (RFC 5465): ``NotifyCommands``, the command for ``IMAPServer``, and ``NotifyWatch``,
what one session's ``NOTIFY SET`` watches and has told.

What is sent, and when:

- the selected mailbox (filter SELECTED or SELECTED-DELAYED): its EXISTS / EXPUNGE / FETCH
  FLAGS (the view's updates) at once when no command is running, or during IDLE; with
  SELECTED-DELAYED the EXPUNGEs wait for a command that may have them (RFC 3501 7.4.1, not
  after FETCH, STORE, SEARCH); MessageNew's fetch attributes give a FETCH of each new message
  after its EXISTS. Without a selected filter the selected mailbox is as without NOTIFY;
- other mailboxes: ``STATUS (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)`` when one changed (never
  for the selected one, as Dovecot), with HIGHESTMODSEQ where FlagChange is asked for or
  CONDSTORE is on (RFC 5465 3.1, 5.1: a flag change alone is told by it, UNSEEN the same or
  not); ``LIST`` for MailboxName (``\\NonExistent`` for a deleted
  mailbox, ``("OLDNAME" (old))`` for a rename) and SubscriptionChange (``\\Subscribed`` or not)
  for what other sessions did (this session's own changes have their tagged OK); METADATA
  (entry names) for MailboxMetadataChange and ServerMetadataChange (notifymeta.py);
- while a command runs these wait for its tagged reply (``flush``, from
  ``IMAPServer.flush_updates``); more than ``MAX_QUEUED`` waiting, or a client that leaves
  ``MAX_UNSENT`` unread, is ``* OK [NOTIFICATIONOVERFLOW]`` and NOTIFY is off (RFC 5465 5.8).

Changes come from the store's event bus (``store/events.py``: other sessions of this process,
SMTP/LMTP delivery, POP3, APPEND and COPY), and for what other processes write (mutt, a second
server) from a look every ``NOTIFY_POLL`` seconds at the folder list, the subscriptions, the
watched mailboxes and the selected one. A session with NOTIFY on is never hibernated
(imap/hibernate.py): its watch lives in this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailsuite.imap.fetch import fetch_plan, fetch_responses
from mailsuite.imap.notifymeta import metadata_line
from mailsuite.imap.notifyspec import (
    FLAG_CHANGE,
    MAILBOX_NAME,
    MESSAGE_EVENTS,
    METADATA_EVENTS,
    SUBSCRIPTION_CHANGE,
    SUPPORTED,
    BadEvent,
    NotifySpec,
    parse_notify,
)
from mailsuite.imap.parser import DELIMITER, Cursor, encode_mailbox, mailbox_name, modified_utf7
from mailsuite.imap.session import states
from mailsuite.net import MAX_UNSENT, unsent
from mailsuite.store import folders
from mailsuite.store.events import Event, bus_of, publish_for
from mailsuite.store.interfaces import MailboxNotFound, StoreError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

NOTIFY_POLL = 5.0  # what other processes write is seen within this
MAX_QUEUED = 1000  # notifications waiting for a command's end before NOTIFICATIONOVERFLOW
MAX_WATCHED = 1000  # mailboxes with message events; more is NO [NOTIFICATIONOVERFLOW]

Status = tuple[int, int, int, int, int]  # MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ


class Overflow(Exception):
    """More to watch than this server will."""


def _status_line(name: str, st: Status, utf8: bool, modseq: bool) -> bytes:
    line = b"STATUS %s (MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN %d" % (
        encode_mailbox(name, utf8), *st[:4])
    return line + (b" HIGHESTMODSEQ %d)" % st[4] if modseq else b")")


def _list_line(attrs: str, name: str, utf8: bool, old: str | None = None) -> bytes:
    line = b"LIST (" + attrs.encode("ascii") + b') "/" ' + encode_mailbox(name, utf8)
    if old is not None:
        line += b' ("OLDNAME" (' + encode_mailbox(old, utf8) + b"))"
    return line


class NotifyWatch:
    """One ``NOTIFY SET`` of one session: the mailboxes and subscriptions last seen, the
    STATUS last told of each watched mailbox, what waits for the running command's end."""

    def __init__(self, session: Any, spec: NotifySpec) -> None:
        self.session = session
        self.spec = spec
        self.names: set[str] = set()
        self.subscribed: set[str] = set()
        self.told: dict[str, Status | None] = {}  # None: not yet known (nothing told)
        self.dirty: set[str] = set()  # watched mailboxes to look at again
        self.queued: list[bytes] = []
        self.last_uid = 0  # the selected mailbox: the highest UID MessageNew's FETCH covered
        self.fetch = None if spec.selected is None or spec.selected.fetch is None else \
            fetch_plan(spec.selected.fetch, True)
        self._checking = False
        self._poll: task.LoopingCall | None = None
        self.stopped = False
        account = session.account
        self.bus = bus_of(getattr(account, "store", None) or account)
        self.key = getattr(getattr(account, "account", None), "name", None) or str(id(account))

    # -- what is watched -----------------------------------------------------------------------
    def selected_name(self) -> str | None:
        view = self.session.view
        return None if view is None else str(view.name)

    def watched(self, name: str) -> bool:
        """A mailbox whose message events this watch tells of by STATUS."""
        group = self.spec.group_for(name, self.subscribed)
        return group is not None and bool(group.events & MESSAGE_EVENTS) and \
            name != self.selected_name() and name in self.names

    def wants(self, name: str, event: str) -> bool:
        group = self.spec.group_for(name, self.subscribed)
        return group is not None and event in group.events

    async def _folders(self) -> tuple[set[str], set[str]]:
        account = self.session.account
        names = {e.name for e in await account.list_mailboxes()}
        subs = {mailbox_name(modified_utf7(n)) for n in await account.subscriptions()}
        return names, subs | {folders.INBOX}

    async def start(self) -> None:
        """Learn the folders and the STATUS of every watched mailbox; with ``SET (STATUS)``
        send that STATUS (the NOTIFY command's untagged replies)."""
        self.bus.subscribe(self.key, self.heard)  # what changes meanwhile is heard too
        self.names, self.subscribed = await self._folders()
        watched = sorted(n for n in self.names if self.watched(n))
        if len(watched) > MAX_WATCHED:
            raise Overflow
        for name in watched:
            st = await self._status(name)
            if self.stopped:
                return
            self.told[name] = st
            if st is not None and self.spec.status:
                self.session.sendUntaggedResponse(self._status_line(name, st))
        view = self.session.view
        if view is not None:
            self.last_uid = view._last_uid()
        if self.spec.others or self.spec.selected is not None:
            self._poll = task.LoopingCall(self.tick)
            self._poll.clock = self.session.clock
            self._poll.start(NOTIFY_POLL, now=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.bus.unsubscribe(self.key, self.heard)
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None

    async def _status(self, name: str) -> Status | None:
        try:
            s = await self.session.account.status(name, self.session.recent)
        except MailboxNotFound:
            return None
        return (s["MESSAGES"], s["UIDNEXT"], s["UIDVALIDITY"], s["UNSEEN"], s["HIGHESTMODSEQ"])

    def _modseq(self, name: str) -> bool:
        """HIGHESTMODSEQ in the mailbox's STATUS lines: FlagChange asked for, or CONDSTORE on."""
        return self.wants(name, FLAG_CHANGE) or b"CONDSTORE" in self.session.enabled

    def _status_line(self, name: str, st: Status) -> bytes:
        return _status_line(name, st, self.session.utf8_names, self._modseq(name))

    # -- events ----------------------------------------------------------------------------------
    def heard(self, event: Event) -> None:
        """The bus's subscriber: one event of the account."""
        if self.stopped or self.session._lost:
            return
        if event.kind == "changed":
            if event.name in self.told or self.watched(event.name):
                self.dirty.add(event.name)
                self._check_soon()
            return
        own = event.source is self.session
        if event.kind == "metadata":  # MailboxMetadataChange, ServerMetadataChange
            line = metadata_line(self, event)
            if line is not None:
                self.emit(line)
        elif event.kind in ("created", "deleted", "renamed"):
            self._renamed_or_made(event, own)
        elif event.kind in ("subscribed", "unsubscribed"):
            on = event.kind == "subscribed"
            if on:
                self.subscribed.add(event.name)
            else:
                self.subscribed.discard(event.name)
            if not own and self.wants(event.name, SUBSCRIPTION_CHANGE):
                attrs = "\\Subscribed" if on else ""
                self.emit(_list_line(attrs, event.name, self.session.utf8_names))
            self._rewatch(event.name)

    def _renamed_or_made(self, event: Event, own: bool) -> None:
        name = event.name
        if event.kind == "created":
            self.names.add(name)
            self.names.update(folders.parents(name))
            line = _list_line("", name, self.session.utf8_names)
        elif event.kind == "deleted":
            self.names.discard(name)
            self.told.pop(name, None)
            line = _list_line("\\NonExistent", name, self.session.utf8_names)
        else:
            old = event.old or ""
            moved = {n for n in self.names if n == old or folders.is_under(n, old)}
            self.names -= moved - {folders.INBOX}  # a renamed INBOX stays, emptied
            for n in moved:
                self.names.add(folders.renamed(n, old, name))
                self.told.pop(n, None)
            line = _list_line("", name, self.session.utf8_names, old)
        wanted = self.wants(name, MAILBOX_NAME) or (
            event.old is not None and self.wants(event.old, MAILBOX_NAME))
        if not own and wanted:
            self.emit(line)
        self._rewatch(name)

    def _rewatch(self, name: str) -> None:
        """A mailbox may be watched now (made, renamed, subscribed): learn its STATUS."""
        if self.watched(name) and name not in self.told:
            self.told[name] = None
            self.dirty.add(name)
            self._check_soon()
        elif not self.watched(name):
            self.told.pop(name, None)

    def unselected(self, name: str | None) -> None:
        """``name`` is selected no more: what the client knows of it is now, as STATUS."""
        if name is not None and name != self.selected_name() and self.watched(name):
            self.told[name] = None
            self.dirty.add(name)
            self._check_soon()

    def _check_soon(self) -> None:
        if not self._checking:
            self._checking = True
            self.session.clock.callLater(0, self._check)

    def _check(self) -> None:
        defer.ensureDeferred(self._look()).addErrback(
            lambda f: log.failure("NOTIFY status failed", f))

    async def _look(self) -> None:
        try:
            while self.dirty and not self.stopped:
                name = self.dirty.pop()
                if not self.watched(name):
                    continue
                try:
                    st = await self._status(name)
                except StoreError as e:
                    log.warn("NOTIFY: STATUS of {name} failed: {why}", name=name, why=e)
                    continue
                old = self.told.get(name)
                if st is None or self.stopped:
                    self.told.pop(name, None)
                    continue
                self.told[name] = st
                if old is not None and (old[:3] != st[:3] or (
                        self.wants(name, FLAG_CHANGE) and old[3:] != st[3:])):
                    self.emit(self._status_line(name, st))
        finally:
            self._checking = False

    def tick(self) -> None:
        """Every NOTIFY_POLL: what other processes changed."""
        if self.stopped or self.session._lost:
            return
        view = self.session.view
        if view is not None and self.spec.selected is not None:
            view.mailbox.refresh().addErrback(lambda f: log.failure("NOTIFY refresh failed", f))
        if self.spec.others:
            defer.ensureDeferred(self._rescan()).addErrback(
                lambda f: log.failure("NOTIFY rescan failed", f))

    async def _rescan(self) -> None:
        names, subs = await self._folders()
        if self.stopped:
            return
        for name in sorted(names - self.names):
            self.heard(Event("created", name))
        for name in sorted(self.names - names):
            self.heard(Event("deleted", name))
        for name in sorted(subs - self.subscribed):
            self.heard(Event("subscribed", name))
        for name in sorted(self.subscribed - subs):
            self.heard(Event("unsubscribed", name))
        self.dirty.update(n for n in self.told if n in self.names)
        if self.dirty:
            self._check_soon()

    # -- sending -----------------------------------------------------------------------------
    def can_send(self) -> bool:
        s = self.session
        return not s._lost and (s._idle_tag is not None or not s._in_flight)

    def emit(self, line: bytes) -> None:
        if self.stopped:
            return
        if self.can_send():
            self.flush()  # what waited goes first
            self.session.sendLine(b"* " + line)
            if unsent(self.session.transport) > MAX_UNSENT:
                self.session.notify_overflow()
            return
        self.queued.append(line)
        if len(self.queued) > MAX_QUEUED:
            self.session.notify_overflow()

    def flush(self) -> None:
        """Send what waited (from flush_updates: before a tagged reply, during IDLE)."""
        lines, self.queued = self.queued, []
        for line in lines:
            self.session.sendLine(b"* " + line)

    def new_messages(self) -> None:
        """After EXISTS: the FETCH of MessageNew's attributes for each new message."""
        view = self.session.view
        if view is None or self.fetch is None or self.session._lost:
            return
        top = view._last_uid()
        if top <= self.last_uid:
            return
        targets = [t for t in view.resolve([(self.last_uid + 1, top)], True)
                   if not view.is_expunged(t[1])]
        self.last_uid = top
        if targets:
            s = self.session
            defer.ensureDeferred(fetch_responses(view, targets, self.fetch, set(), s._write,
                                                 lambda: s._lost)).addErrback(
                lambda f: log.failure("NOTIFY MessageNew FETCH failed", f))


def _name_after(args: Cursor) -> str:
    """The mailbox argument of CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE, read ahead."""
    ahead = Cursor(args.data, args.pos)
    ahead.utf8 = args.utf8  # UTF8=ACCEPT, IMAP4rev2: names in UTF-8
    ahead.sp()
    return ahead.mailbox()


class NotifyCommands(_Base):
    """NOTIFY for ``IMAPServer``; the folder commands also tell the account's event bus."""

    _notify: NotifyWatch | None = None
    _idle_tag: bytes | None  # idle.IdleCommands' (set in IMAPServer.__init__)
    _in_flight: bool  # IMAPServer's: a command is running

    def own_capabilities(self) -> dict[bytes, Any]:
        return {} if self.state == "unauth" else {b"NOTIFY": None}

    @states("auth", "select")
    async def cmd_NOTIFY(self, tag: bytes, args: Cursor) -> None:
        metadata = bool(getattr(self.config.imap, "imap_metadata", False))
        try:
            spec = parse_notify(args, (*SUPPORTED, *METADATA_EVENTS) if metadata else SUPPORTED)
        except BadEvent as e:
            names = " ".join(e.events).encode("ascii", "replace")
            self.sendNegativeResponse(tag, b"[BADEVENT (" + names + b")] Unsupported events.")
            return
        self._notify_stop()
        if spec is not None:
            watch = NotifyWatch(self, spec)
            try:
                await watch.start()
            except Overflow:
                watch.stop()
                self.sendNegativeResponse(tag, b"[NOTIFICATIONOVERFLOW] Too many mailboxes.")
                return
            except BaseException:  # a store error: its tagged NO (server._failed), no watch
                watch.stop()
                raise
            if self._lost:
                watch.stop()
                return
            self._notify = watch
            self._notify_hook_view()
        self.sendPositiveResponse(tag, b"NOTIFY completed.")

    def _notify_stop(self) -> None:
        watch, self._notify = self._notify, None
        if watch is not None:
            watch.stop()
            if self.view is not None and self._idle_tag is None:
                self.view.on_change = None

    def notify_overflow(self) -> None:
        """RFC 5465 5.8: say so, and NOTIFY is off until the client sets it again."""
        self._notify_stop()
        self.sendLine(b"* OK [NOTIFICATIONOVERFLOW] Too many notifications, NOTIFY is off.")

    def notify_flush(self) -> None:
        """From IMAPServer.flush_updates: what waited, and MessageNew's FETCH."""
        watch = self._notify
        if watch is not None and not self._lost:
            watch.flush()
            watch.new_messages()

    def _resting_on_change(self) -> Any:
        """What the selected view calls on a change outside IDLE (idle.py restores it)."""
        watch = self._notify
        sel = None if watch is None else watch.spec.selected
        return self._notify_view_changed if sel is not None and sel.events else None

    def _notify_hook_view(self) -> None:
        if self.view is not None and self._idle_tag is None:
            self.view.on_change = self._resting_on_change()
        watch = self._notify
        if watch is not None and self.view is not None:
            watch.last_uid = self.view._last_uid()

    def _notify_view_changed(self) -> None:
        watch = self._notify
        if watch is None or self._lost:
            return
        if self._idle_tag is not None:
            self.flush_updates()
            return
        if self._in_flight or watch.spec.selected is None:
            return  # the running command's tagged reply flushes
        view = self.view
        if view is None:
            return
        if FLAG_CHANGE not in watch.spec.selected.events and not (
                view._added or view._expunged):
            return  # only flags changed: told at the next command, as without NOTIFY
        self.flush_updates(allow_expunge=watch.spec.immediate_expunge)

    # -- the folder commands tell the bus ---------------------------------------------------------
    def _publish(self, kind: str, name: str, old: str | None = None) -> None:
        try:
            name = folders.normalize(name)
            old = None if old is None else folders.normalize(old)
        except StoreError:
            return
        publish_for(self, Event(kind, name, old, source=self))

    async def cmd_SELECT(self, tag: bytes, args: Cursor, readonly: bool = False) -> None:
        before = None if self.view is None else self.view.name
        await super().cmd_SELECT(tag, args, readonly)  # type: ignore[misc]
        if self._notify is not None:
            self._notify_hook_view()
            self._notify.unselected(before)

    async def _close(self, tag: bytes, args: Cursor, expunge: bool) -> None:
        """CLOSE and UNSELECT (selected.py): the mailbox is watched as the others again."""
        before = None if self.view is None else self.view.name
        await super()._close(tag, args, expunge)  # type: ignore[misc]
        if self._notify is not None:
            self._notify.unselected(before)

    cmd_SELECT.imap_states = ("auth", "select")  # type: ignore[attr-defined]

    async def cmd_CREATE(self, tag: bytes, args: Cursor) -> None:
        name = _name_after(args).rstrip(DELIMITER)
        if await super().cmd_CREATE(tag, args) is not False:  # type: ignore[misc]
            self._publish("created", name)  # (not after NO [USEATTR]: objectid.py)

    async def cmd_DELETE(self, tag: bytes, args: Cursor) -> None:
        name = _name_after(args)
        await super().cmd_DELETE(tag, args)  # type: ignore[misc]
        self._publish("deleted", name)

    async def cmd_RENAME(self, tag: bytes, args: Cursor) -> None:
        ahead = Cursor(args.data, args.pos)
        ahead.utf8 = args.utf8
        ahead.sp()
        old = ahead.mailbox()
        ahead.sp()
        new = ahead.mailbox().rstrip(DELIMITER)
        await super().cmd_RENAME(tag, args)  # type: ignore[misc]
        self._publish("renamed", new, old)

    async def cmd_SUBSCRIBE(self, tag: bytes, args: Cursor) -> None:
        name = _name_after(args)
        await super().cmd_SUBSCRIBE(tag, args)  # type: ignore[misc]
        self._publish("subscribed", name)

    async def cmd_UNSUBSCRIBE(self, tag: bytes, args: Cursor) -> None:
        name = _name_after(args)
        await super().cmd_UNSUBSCRIBE(tag, args)  # type: ignore[misc]
        self._publish("unsubscribed", name)

    for _f in (cmd_CREATE, cmd_DELETE, cmd_RENAME, cmd_SUBSCRIBE, cmd_UNSUBSCRIBE):
        _f.imap_states = ("auth", "select")  # type: ignore[attr-defined]
    del _f
