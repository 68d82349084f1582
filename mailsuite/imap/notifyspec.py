"""The arguments of NOTIFY (RFC 5465 section 8) as a ``NotifySpec``; no I/O.

``parse_notify(cursor)`` reads what follows ``NOTIFY``: ``NONE`` (None), or ``SET [(STATUS)]``
and one or more event groups ``(filter events)``. Syntax errors, and the rules RFC 5465 puts
on events (MessageNew and MessageExpunge together; FlagChange and AnnotationChange only with
both; fetch attributes only for the selected mailbox; one selected filter), are a
``ParseError`` (tagged BAD). An event this server does not implement (AnnotationChange, the
METADATA events when METADATA is off: ``parse_notify``'s ``supported``, any other atom) is
``BadEvent`` (tagged ``NO [BADEVENT ...]``, naming them,
as Dovecot does).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsuite.imap.fetch import FetchSyntaxError, fetch_plan
from mailsuite.imap.parser import Cursor, ParseError
from mailsuite.store import folders
from mailsuite.store.interfaces import InvalidMailboxName

MESSAGE_NEW = "MessageNew"
MESSAGE_EXPUNGE = "MessageExpunge"
FLAG_CHANGE = "FlagChange"
ANNOTATION_CHANGE = "AnnotationChange"
MAILBOX_NAME = "MailboxName"
SUBSCRIPTION_CHANGE = "SubscriptionChange"
MAILBOX_METADATA_CHANGE = "MailboxMetadataChange"
SERVER_METADATA_CHANGE = "ServerMetadataChange"
SUPPORTED = (MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, MAILBOX_NAME, SUBSCRIPTION_CHANGE)
METADATA_EVENTS = (MAILBOX_METADATA_CHANGE, SERVER_METADATA_CHANGE)  # with METADATA on
KNOWN = (*SUPPORTED, ANNOTATION_CHANGE, *METADATA_EVENTS)
MESSAGE_EVENTS = frozenset({MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, ANNOTATION_CHANGE})
_BY_UPPER = {e.upper(): e for e in KNOWN}

SELECTED, SELECTED_DELAYED = "SELECTED", "SELECTED-DELAYED"
INBOXES, PERSONAL, SUBSCRIBED = "INBOXES", "PERSONAL", "SUBSCRIBED"
SUBTREE, MAILBOXES = "SUBTREE", "MAILBOXES"
_FILTERS = {SELECTED, SELECTED_DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES}


class BadEvent(Exception):
    """Events this server does not offer (``events``, as the client spelt them normalised)."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(" ".join(events))
        self.events = events


@dataclass(frozen=True)
class Group:
    """One event group: its filter, the mailbox names of SUBTREE / MAILBOXES, its events and
    (selected filter only) MessageNew's fetch attributes as sent, ``b"(...)"``."""

    filter: str
    names: tuple[str, ...]
    events: frozenset[str]
    fetch: bytes | None = None

    def matches(self, name: str, subscribed: set[str]) -> bool:
        """Whether mailbox ``name`` is one this (non-selected) group names."""
        if self.filter in (INBOXES, PERSONAL):  # one personal namespace; Sieve may file mail
            return True  # into any folder, so every one is an inbox (as Dovecot has it)
        if self.filter == SUBSCRIBED:
            return name in subscribed
        if self.filter == SUBTREE:
            return any(name == n or folders.is_under(name, n) for n in self.names)
        return name in self.names


@dataclass(frozen=True)
class NotifySpec:
    status: bool  # SET (STATUS): a STATUS for each watched mailbox before the tagged OK
    selected: Group | None  # SELECTED or SELECTED-DELAYED
    others: tuple[Group, ...]

    @property
    def immediate_expunge(self) -> bool:
        return self.selected is not None and self.selected.filter == SELECTED

    def group_for(self, name: str, subscribed: set[str]) -> Group | None:
        """The first non-selected group naming ``name`` (the first one wins, RFC 5465 6)."""
        for group in self.others:
            if group.matches(name, subscribed):
                return group
        return None


def _balanced(args: Cursor) -> bytes:
    """A parenthesised list as sent (fetch attributes have brackets and quoted strings)."""
    data, start, depth, pos = args.data, args.pos, 0, args.pos
    quoted = False
    while pos < len(data):
        c = data[pos : pos + 1]
        if quoted:
            if c == b"\\":
                pos += 1
            elif c == b'"':
                quoted = False
        elif c == b'"':
            quoted = True
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth == 0:
                args.pos = pos + 1
                return data[start : pos + 1]
        pos += 1
    raise ParseError("unbalanced parenthesis")


def _name(args: Cursor) -> str:
    name = args.mailbox()
    try:
        return folders.normalize(name)
    except InvalidMailboxName:
        return name  # no mailbox can have it: it matches nothing


def _mailboxes(args: Cursor) -> tuple[str, ...]:
    if args.peek() != b"(":
        return (_name(args),)
    args.pos += 1
    names: list[str] = []
    while True:
        names.append(_name(args))
        if args.peek() == b")":
            args.pos += 1
            return tuple(names)
        args.sp()


def _events(args: Cursor, selected: bool, unsupported: list[str],
            supported: tuple[str, ...]) -> tuple[frozenset[str], bytes | None]:
    bare = args.peek() != b"("  # the RFC's own examples leave out the parentheses
    if bare:
        if args.data[args.pos : args.pos + 4].upper() == b"NONE" and \
                args.data[args.pos + 4 : args.pos + 5] in (b")", b" ", b""):
            args.pos += 4
            return frozenset(), None
    else:
        args.pos += 1
    events: set[str] = set()
    fetch: bytes | None = None
    while True:
        raw = args.atom()
        event = _BY_UPPER.get(raw.upper().decode("ascii", "replace"))
        if event is None:
            event = raw.decode("ascii", "replace")
        if event not in supported and event not in unsupported:
            unsupported.append(event)
        events.add(event)
        if event == MESSAGE_NEW and args.data[args.pos : args.pos + 2] == b" (":
            args.sp()
            if not selected:
                raise ParseError("fetch attributes are for the selected mailbox only")
            fetch = _balanced(args)
            try:
                fetch_plan(fetch, True)
            except FetchSyntaxError as e:
                raise ParseError(str(e)) from None
        if args.peek() == b")":
            args.pos += 0 if bare else 1  # a bare list ends with its group
            break
        args.sp()
    if (MESSAGE_NEW in events) != (MESSAGE_EXPUNGE in events):
        raise ParseError("MessageNew and MessageExpunge go together")
    if events & {FLAG_CHANGE, ANNOTATION_CHANGE} and MESSAGE_NEW not in events:
        raise ParseError("FlagChange needs MessageNew and MessageExpunge")
    return frozenset(events), fetch


def _group(args: Cursor, unsupported: list[str], supported: tuple[str, ...]) -> Group:
    if args.peek() != b"(":
        raise ParseError("expected an event group")
    args.pos += 1
    name = args.atom().upper().decode("ascii", "replace")
    if name not in _FILTERS:
        raise ParseError("unknown mailbox filter")
    args.sp()
    names: tuple[str, ...] = ()
    if name in (SUBTREE, MAILBOXES):
        names = _mailboxes(args)
        args.sp()
    events, fetch = _events(args, name in (SELECTED, SELECTED_DELAYED), unsupported, supported)
    if args.peek() != b")":
        raise ParseError("expected )")
    args.pos += 1
    return Group(name, names, events, fetch)


def parse_notify(args: Cursor,
                 supported: tuple[str, ...] = SUPPORTED) -> NotifySpec | None:
    """NOTIFY's arguments (after the command name): None for ``NONE``; events not in
    ``supported`` are ``BadEvent``."""
    args.sp()
    what = args.atom().upper()
    if what == b"NONE":
        args.end()
        return None
    if what != b"SET":
        raise ParseError("expected SET or NONE")
    args.sp()
    status = False
    for indicator in (b"STATUS ", b"(STATUS) "):  # RFC 5465 8: SP "STATUS" (and as a list)
        if args.data[args.pos : args.pos + len(indicator)].upper() == indicator:
            args.pos += len(indicator) - 1
            status = True
            args.sp()
    unsupported: list[str] = []
    selected: Group | None = None
    others: list[Group] = []
    while True:
        group = _group(args, unsupported, supported)
        if group.filter in (SELECTED, SELECTED_DELAYED):
            if selected is not None:
                raise ParseError("more than one selected filter")
            selected = group
        elif group.events:  # NONE: the default for every mailbox
            others.append(group)
        if args.at_end() or not args.maybe_sp() or args.at_end():
            break
    args.end()
    if unsupported:
        raise BadEvent(unsupported)
    return NotifySpec(status, selected, tuple(others))
