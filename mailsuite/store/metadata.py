"""METADATA entries (RFC 5464) of an account: the server's (``mailbox`` None) and each mailbox's.

Entries are ``{entry name: value}``; names are lower case (RFC 5464 3.2: case-insensitive),
beginning ``/private/`` or ``/shared/`` (checked by imap/metadata.py), values bytes.

The mbox store keeps them beside the mailbox's index: ``~/mail/.imap/<name>/.mailsuite-metadata``
(the index directory moves with RENAME and goes with DELETE, so the entries do), the server's
in ``~/mail/.imap/.mailsuite-metadata``. No folder level begins with '.', so no folder's index
directory has these names. A file is replaced atomically and durably (temp file, fsync, rename:
safepath.Dir.write_file) by one change at a time (the account's folder lock, which DELETE and
RENAME take too). The memory store keeps them in ``MemoryStore.metadata``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from twisted.internet import defer

from mailsuite.store import folders
from mailsuite.store.interfaces import MailboxNotFound, StoreError
from mailsuite.store.mbox import store_errors

FILE = ".mailsuite-metadata"
#: Dovecot-like limits: the largest value, the most entries of one mailbox (or the server)
MAX_VALUE = 16 * 1024
MAX_ENTRIES = 200
VERSION = 1

Entries = dict[str, bytes]


class TooMany(StoreError):
    """The change would leave more than MAX_ENTRIES entries (``[METADATA TOOMANY]``)."""


class TooBig(StoreError):
    """A value longer than MAX_VALUE (``[METADATA MAXSIZE n]``)."""


def encode(entries: Entries) -> bytes:
    values = {name: base64.b64encode(value).decode("ascii") for name, value in entries.items()}
    return json.dumps({"version": VERSION, "entries": values}, sort_keys=True).encode("ascii")


def decode(data: bytes | None) -> Entries:
    """The entries of a file; StoreError if it is not one ``encode`` wrote."""
    if not data:
        return {}
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError("unknown version")
        raw = doc["entries"]
        if not isinstance(raw, dict):
            raise ValueError("no entries")
        return {str(k): base64.b64decode(v, validate=True) for k, v in raw.items()}
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise StoreError(f"unreadable metadata file: {e}") from None


def changed(entries: Entries, changes: dict[str, bytes | None]) -> Entries:
    """``entries`` with ``changes`` applied (None removes); TooBig / TooMany past the limits."""
    for value in changes.values():
        if value is not None and len(value) > MAX_VALUE:
            raise TooBig(f"a value may have at most {MAX_VALUE} bytes")
    out = dict(entries)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    if len(out) > MAX_ENTRIES and len(out) > len(entries):
        raise TooMany(f"at most {MAX_ENTRIES} entries")
    return out


def _levels(tree: Any, mailbox: str | None) -> list[str]:
    """The file's path below ``~/mail`` (levels on disk)."""
    if mailbox is None:
        return [".imap", FILE]
    return [".imap", *tree._levels(mailbox), FILE]


class MboxMetadata:
    """Entries of an ``MboxStore``'s accounts (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, account: Any, mailbox: str | None) -> defer.Deferred[Entries]:
        tree = self.store._tree(account)

        def work() -> Entries:
            if mailbox is not None and not tree.exists(mailbox):
                raise MailboxNotFound(mailbox)
            return decode(tree._read_small(_levels(tree, mailbox)))

        d: defer.Deferred[Entries] = self.store.blocking(store_errors, work)
        return d

    def set(self, account: Any, mailbox: str | None,
            changes: dict[str, bytes | None]) -> defer.Deferred[None]:
        tree = self.store._tree(account)

        def work() -> None:
            if mailbox is not None and not tree.exists(mailbox):
                raise MailboxNotFound(mailbox)
            levels = _levels(tree, mailbox)
            before = decode(tree._read_small(levels))
            after = changed(before, changes)
            if after != before:
                tree._write_small(levels, encode(after))

        d: defer.Deferred[None] = self.store._folder_op(account, lambda name: False, work)
        return d


class MemoryMetadata:
    """Entries of a ``MemoryStore`` (its ``metadata``: {(user, mailbox or None): entries})."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _check(self, account: Any, mailbox: str | None) -> None:
        if mailbox is not None and folders.normalize(mailbox) not in self.store._names(account):
            raise MailboxNotFound(mailbox)

    def get(self, account: Any, mailbox: str | None) -> defer.Deferred[Entries]:
        try:
            self._check(account, mailbox)
        except MailboxNotFound:
            return defer.fail()
        return defer.succeed(dict(self.store.metadata.get((account.name, mailbox), {})))

    def set(self, account: Any, mailbox: str | None,
            changes: dict[str, bytes | None]) -> defer.Deferred[None]:
        try:
            self._check(account, mailbox)
            key = (account.name, mailbox)
            self.store.metadata[key] = changed(self.store.metadata.get(key, {}), changes)
        except StoreError:
            return defer.fail()
        return defer.succeed(None)


def metadata_of(store: Any) -> MboxMetadata | MemoryMetadata:
    """The entries of ``store``'s accounts (an MboxStore's on disk, a MemoryStore's in it)."""
    if hasattr(store, "metadata"):
        return MemoryMetadata(store)
    return MboxMetadata(store)
