"""What the rest of mailsuite may ask of a mail store.

The store is the only code that touches mailbox files. Protocol code (SMTP, POP3, IMAP) talks to
these interfaces and never opens a file. Two implementations: ``mailsuite.store.mbox.MboxStore``
(the real one, the storage contract of DESIGN.md) and ``mailsuite.store.memory.MemoryStore`` (the
test double). ``tests/store_conformance.py`` runs the same tests against both.

Conventions
- Message bytes cross this interface in their on-disk form: LF line ends (CRLF where another
  program stored them so), no mbox ``From `` line, no trailing separator line. Protocol code
  sends ``mailsuite.wire.to_wire`` of them.
- ``MessageInfo.size`` is the size a client is told: ``len(to_wire(read(uid)))``, known without
  reading the message (``mailsuite.wire.wire_size``).
- Flags are IMAP names as ``str``: ``\\Seen \\Answered \\Flagged \\Deleted \\Draft`` and keywords.
  ``\\Recent`` is a per-session notion and never stored.
- Everything that may touch the disk returns a Deferred and runs its I/O off the reactor thread.
  All state visible to callers (``messages``, ``uid_next``...) changes only on the reactor thread,
  with one exception: a delivery thread may append new, already durable entries to the end of the
  published ``messages`` list before the reactor publishes them (see ``messages``), so a holder
  must keep the length it took, never re-read ``len(messages)`` as "the mailbox now".
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from zope.interface import Attribute, Interface

SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})


class StoreError(Exception):
    """A mailbox operation failed (I/O error, lock timeout, corrupt mailbox)."""


class StoreRefused(StoreError):
    """Refused for a reason the user or the administrator must fix (a symlinked folder, a
    mailbox owned by someone else, no home directory): logged as one line, no traceback.
    ``code``: the IMAP response code (RFC 5530) it is answered with."""

    code = "CANNOT"


class MailboxNotFound(StoreError):
    """The named mailbox does not exist."""


class MailboxExists(StoreError):
    """CREATE or RENAME to a name that is already a mailbox."""


class InvalidMailboxName(StoreError):
    """A name the store cannot hold (empty level, '..', a control character, too long...)."""


class MailboxHasChildren(StoreError):
    """DELETE of a mailbox that still has children (Dovecot refuses it the same way)."""


class UnknownUID(StoreError):
    """A UID that is not (or no longer) in the mailbox."""


@dataclass(frozen=True)
class MessageInfo:
    """What is known about one message without reading it."""

    uid: int
    flags: frozenset[str]
    internal_date: datetime  # timezone-aware
    size: int  # len(mailsuite.wire.to_wire(message)), as RETR / BODY[] send it
    modseq: int = 0  # the mod-sequence of its last change (RFC 7162)
    saved: int = 0  # when it was saved into this mailbox (RFC 8514; epoch seconds), 0: unknown


@dataclass
class Changes:
    """What a refresh found: given to every listener of the mailbox, in this order of events."""

    expunged: list[int] = field(default_factory=list)  # UIDs gone
    # new messages (MessageInfo-like), ascending UID (the mbox store's: an index.EntryTable)
    added: MutableSequence[Any] = field(default_factory=list)
    flags: dict[int, frozenset[str]] = field(default_factory=dict)  # UID -> new flags

    def __bool__(self) -> bool:
        return bool(self.expunged or self.added or self.flags)


Listener = Callable[[Changes], None]


@dataclass(frozen=True)
class MailboxEntry:
    """One mailbox as LIST shows it. ``name`` uses '/' as the hierarchy separator."""

    name: str
    has_children: bool = False
    special_use: str | None = None  # "\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"


class IMailbox(Interface):
    """One open mailbox (shared by every session that has it open)."""

    name = Attribute("The mailbox name, e.g. 'INBOX'.")
    uid_validity = Attribute("int: never changes for the life of the mailbox")
    uid_next = Attribute("int: the UID the next new message will get")
    highest_modseq = Attribute(
        "int: the mod-sequence of the mailbox's last change (RFC 7162 HIGHESTMODSEQ); every "
        "change (message added, flags changed, message expunged) gets one above it, the "
        "messages one operation changes the same one, kept in ``MessageInfo.modseq``"
    )
    vanished = Attribute(
        "mailsuite.store.modseq.Vanished: the UIDs expunged with the mod-sequence they went at")
    messages = Attribute(
        "sequence of MessageInfo-like objects (uid, flags, internal_date, size), ascending UID "
        "(the mbox store's: an ``entrytable.EntryTable``, which makes each when read): the "
        "state after the last refresh. Shared, never copied: treat it as read-only. A change "
        "publishes a new list, except that new messages may be appended to the current one in "
        "place: who keeps a reference as a snapshot keeps its length too (``ImapMailboxView``)."
    )

    def refresh():
        """Bring ``messages`` up to date with the disk (mail appended by others, external changes).

        New UIDs are made durable before they are shown. Listeners are told of any change.
        Returns Deferred[Changes].
        """

    def read(uid):
        """Deferred[bytes]: the whole message (as stored, state headers hidden). UnknownUID if
        gone."""

    def read_headers(uids):
        """Deferred[dict[int, bytes]]: the header block (up to and including the blank line) of
        each UID still present; UIDs that are gone are left out."""

    def header_fields(uids, names):
        """Deferred[dict[int, bytes]]: for each UID still present, its header block cut down
        to the fields ``names`` (bytes, any case), in order, then the blank line
        (``headercache.pick``): FETCH reads ``HEADER.FIELDS`` of ``names`` from it exactly as
        from the whole header. The mbox store keeps them in a cache beside the index."""

    def cached_header_fields(uids, names):
        """Deferred[(frozenset[bytes], dict[int, bytes], dict[int, int])]: the field names
        (upper case) a header cache holds and, for each UID it has, its header cut down to all
        of them (as ``header_fields`` gives it), and its sent date (``fastkeys.cache_date``:
        NO_DATE for the arrival) where the fields hold a Date, when they include every one of
        ``names``; otherwise, or without a cache, ``(frozenset(), {}, {})``. Never reads the
        messages themselves: SORT uses it to make the keys of cached fields at the cost of
        the cache alone."""

    def set_flags(changes):
        """Persist flags: ``changes`` maps UID -> the complete new frozenset of flags.

        Unknown UIDs are ignored. Listeners are told. Deferred[None].
        """

    def change_flags(uids, add=frozenset(), remove=frozenset(), replace=None):
        """Change the flags of these messages relative to what is stored NOW (not to what a
        caller last saw): each message's new flags are ``replace`` when given, else its
        current stored flags ``| add - remove``. Two sessions adding and removing different
        flags of one message both take effect (RFC 3501 STORE +FLAGS / -FLAGS).

        Unknown UIDs are left out. Listeners are told of the messages that changed.
        Deferred[dict[int, frozenset[str]]]: the resulting flags of every UID still present.
        """

    def expunge(uids):
        """Remove these messages for good. Mail that arrived meanwhile is kept.

        Returns Deferred[list[int]] of the UIDs actually removed. Listeners are told.
        """

    def append(data, flags=frozenset(), internal_date=None):
        """Add a message (bytes, LF or CRLF line ends) with flags and date; durable before the
        Deferred fires. Deferred[int]: the new UID."""

    def email_id(uid):
        """str | None: what identifies the message's content (its fingerprint: the same in a
        copy, after a rewrite by another program), None for a UID not in the mailbox; the
        IMAP EMAILID (RFC 8474) is made of it."""

    def append_messages(messages):
        """Add every ``(data, flags, internal date or None)`` of ``messages`` or, on failure,
        none of them (RFC 3502 MULTIAPPEND), durable before the Deferred fires (one fsync).
        Deferred[list[int]]: the new UIDs, in order."""

    def changed_since(modseq):
        """list[int] | None: the UIDs (ascending; a superset: check each ``modseq``) changed
        (flags, added) after ``modseq``, known without a pass over the messages (QRESYNC);
        None when the store does not know that far back."""

    def keywords():
        """set[str]: the keywords (flags that are not system flags) messages of the mailbox
        have had since it was opened, kept up to date without a pass (SELECT's FLAGS)."""

    def unseen_count():
        """int: how many of ``messages`` have no ``\\Seen`` (STATUS UNSEEN)."""

    def first_unseen():
        """int | None: the UID of the first of ``messages`` without ``\\Seen`` (SELECT's
        UNSEEN), or None."""

    def add_listener(listener):
        """Call ``listener(changes)`` after every change, made here or found on disk."""

    def remove_listener(listener):
        """Stop calling ``listener``."""

    def close():
        """This user of the mailbox is done with it (the store may free it when none are left)."""


class IMailStore(Interface):
    """All mailboxes of all accounts."""

    def open(account, name="INBOX"):
        """Deferred[IMailbox]: open (creating INBOX on first use). MailboxNotFound otherwise.
        Each ``open`` must be matched by one ``close()`` of the returned mailbox."""

    def deliver(account, data, sender):
        """Append a message arriving by mail (SMTP, LMTP, sendmail) to the account's INBOX.

        ``data`` is the complete message (headers and body, LF or CRLF line ends) as it should be
        stored; ``sender`` the envelope sender (``''`` for the null sender). The Deferred fires only
        once the message is on disk (fsync'ed); an open mailbox's listeners then hear of it.
        """

    def deliver_many(account, items):
        """Group commit: deliver several ``(data, sender)`` (each as :meth:`deliver`) to the
        account's INBOX in one write, one lock and one fsync, in this order with consecutive
        UIDs. All or none: the Deferred fires once all are on disk, or fails and none is
        acknowledged (``mailsuite.mta.delivery`` batches concurrent copies through this)."""

    def settle():
        """Deferred[None]: fires when every operation queued on a mailbox so far is done (the
        compaction of what was expunged among them); the server waits for it before it stops."""

    # Folders. Names are IMAP names with '/' as separator; "INBOX" (any case) is the INBOX.
    # Every mailbox is selectable, also one with children (Outlook users rely on that).

    def list_mailboxes(account):
        """Deferred[list[MailboxEntry]]: every mailbox of the account, INBOX first, then sorted.
        On first use the special-use folders of the configuration are created and subscribed."""

    def create(account, name):
        """Deferred[None]: make an empty mailbox, and any missing parents.
        MailboxExists, InvalidMailboxName."""

    def delete(account, name):
        """Deferred[None]: remove a mailbox and its messages. INBOX cannot be deleted
        (InvalidMailboxName); a mailbox with children -> MailboxHasChildren. Open sessions on it
        see every message expunged."""

    def rename(account, old, new):
        """Deferred[None]: rename a mailbox with its children. Renaming INBOX moves its messages
        into the new mailbox and leaves INBOX empty (RFC 3501). UIDVALIDITY of renamed mailboxes
        may change. MailboxNotFound, MailboxExists, InvalidMailboxName."""

    def folder_attrs(account, name, use=None):
        """Deferred[folderattrs.FolderAttrs]: the folder's MAILBOXID (made at the first look,
        kept across RENAME, never reused) and the special-use attribute given at CREATE
        (``use``: give it now, one of ``folderattrs.CREATABLE_USES``, else
        InvalidMailboxName); list_mailboxes shows that attribute. MailboxNotFound."""

    def subscriptions(account):
        """Deferred[set[str]]: subscribed names (which need not exist), persistent."""

    def subscribe(account, name):
        """Deferred[None]"""

    def unsubscribe(account, name):
        """Deferred[None]"""
