"""The account-level event bus: what NOTIFY (RFC 5465, imap/notify.py) hears of changes to an
account outside the mailbox a session has selected.

One ``EventBus`` per store (``bus_of(store)``), keyed by account name. Events:

- ``changed``: a mailbox's messages changed (new mail, expunges, flags), told by the store
  mailbox (``mailbox_changed``, where it tells its listeners) and by a delivery to a mailbox
  nobody has open (``mail_arrived``);
- ``created``, ``deleted``, ``renamed`` (with ``old``), ``subscribed``, ``unsubscribed``:
  published by the IMAP session that made the change;
- ``metadata``: SETMETADATA (imap/metadata.py) set entries of mailbox ``name`` (``""``: the
  server's), their names in ``changes``.

Cheap when nobody listens: a publish for an account without subscribers is one dict look-up,
a mailbox change of a store no session made a bus for one weak-dict look-up. Sessions of
other processes (and mutt) are not heard here: notify.py also looks, slowly, at what it
watches.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class Event:
    kind: str  # changed, created, deleted, renamed, subscribed, unsubscribed, metadata
    name: str  # the mailbox (its new name for renamed)
    old: str | None = None  # renamed: the name before
    source: object | None = None  # the session that made the change (None: anyone else)
    changes: Any = None  # changed: the store's Changes, when known; metadata: entry names


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscriber]] = {}

    def subscribe(self, account: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(account, []).append(subscriber)

    def unsubscribe(self, account: str, subscriber: Subscriber) -> None:
        subs = self._subscribers.get(account)
        if subs and subscriber in subs:
            subs.remove(subscriber)
            if not subs:
                del self._subscribers[account]

    def listened(self, account: str) -> bool:
        return account in self._subscribers

    def publish(self, account: str, event: Event) -> None:
        subs = self._subscribers.get(account)
        if not subs:
            return
        for subscriber in list(subs):
            try:
                subscriber(event)
            except Exception:  # one session's bug never stops the others hearing it
                log.failure("NOTIFY subscriber failed")


_buses: weakref.WeakKeyDictionary[Any, EventBus] = weakref.WeakKeyDictionary()


def bus_of(store: Any) -> EventBus:
    """The bus of a store (made on first use)."""
    bus = _buses.get(store)
    if bus is None:
        bus = _buses[store] = EventBus()
    return bus


def publish_for(session: Any, event: Event) -> None:
    """Publish ``event`` on the bus of the IMAP session's account (its ImapAccount's store and
    account name); nothing for a session with none (not logged in, a stand-in avatar)."""
    account = getattr(session, "account", None)
    store = getattr(account, "store", None)
    key = getattr(getattr(account, "account", None), "name", None)
    if store is not None and key is not None:
        bus_of(store).publish(key, event)


def mailbox_changed(store: Any, account: str, name: str, changes: Any) -> None:
    """A store mailbox told its listeners of ``changes`` (called by the store)."""
    bus = _buses.get(store)
    if bus is not None and bus.listened(account):
        bus.publish(account, Event("changed", name, changes=changes))


def mail_arrived(store: Any, account: str, name: str) -> None:
    """Mail was written to a mailbox no session has open (a delivery)."""
    bus = _buses.get(store)
    if bus is not None:
        bus.publish(account, Event("changed", name))
