"""Per-folder attributes the IMAP server keeps: the folder's MAILBOXID (RFC 8474) and the
special-use attribute given at CREATE (RFC 6154 CREATE-SPECIAL-USE).

In the mbox store they live beside the folder's index, in ``~/mail/.imap/<name>/.mailsuite-folder``
(a level starting with '.' is never a folder name, so no child folder's index directory can
take the name): the index directory moves with RENAME and goes with DELETE, so the MAILBOXID
survives a rename and a deleted folder's id is never seen again (a new folder of that name gets
a new one). RENAME INBOX leaves INBOX its id; the new folder gets one of its own. The file::

    mailboxid F3b9c0a6e1f24d7a8c5b2e90
    special-use \\Drafts

A MAILBOXID is made at the first look (random, 96 bits: unique without a counter). Blocking:
the ``FolderAttrsStore`` methods run it in a thread under the account's folder lock. A
look again at files an lstat says are unchanged is answered from memory (``attrscache``).

A configured special-use folder (``[mailbox]`` keys) has that attribute unless CREATE gave it
another.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from mailsuite.store import folders
from mailsuite.store.attrscache import AttrsCache
from mailsuite.store.interfaces import (
    InvalidMailboxName,
    MailboxNotFound,
    StoreError,
    StoreRefused,
)

ATTRS_FILE = ".mailsuite-folder"
#: The special-use attributes a CREATE may give (RFC 6154 2): \All and \Flagged are virtual
#: folders this store does not have.
CREATABLE_USES = frozenset({"\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash"})


@dataclass(frozen=True)
class FolderAttrs:
    mailbox_id: str
    special_use: str | None = None


def new_mailbox_id() -> str:
    return "F" + secrets.token_hex(12)


def check_use(flag: str) -> str:
    """The attribute as this store spells it (they are case-insensitive); InvalidMailboxName
    for one a folder cannot have (the client gets NO [USEATTR])."""
    for use in CREATABLE_USES:
        if use.lower() == flag.lower():
            return use
    raise InvalidMailboxName(f"{flag} cannot be given to a folder")


def parse(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, _, value = line.partition(" ")
        if key and value:
            out[key] = value
    return out


def unparse(attrs: dict[str, str]) -> bytes:
    return "".join(f"{k} {v}\n" for k, v in sorted(attrs.items())).encode()


def _levels(tree: Any, name: str) -> list[str]:
    return [".imap", *tree._levels(name), ATTRS_FILE]


def read_attrs(tree: Any, name: str) -> dict[str, str]:
    """What the file holds (nothing if it or ``~/mail`` is missing). Blocking."""
    return parse(tree._read_small(_levels(tree, name)) or b"")


def load(tree: Any, name: str, use: str | None = None) -> FolderAttrs:
    """The attributes of folder ``name`` (a MAILBOXID made and written if it has none; ``use``
    stored as its special use when given). MailboxNotFound, StoreError,
                                        StoreRefused. Blocking."""
    try:
        return _load(tree, name, use)
    except OSError as e:
        raise StoreError(f"{e.strerror or e}: {e.filename or name}") from e


def _load(tree: Any, name: str, use: str | None) -> FolderAttrs:
    if not tree.exists(name):
        raise MailboxNotFound(name)
    attrs = read_attrs(tree, name)
    before = dict(attrs)
    attrs.setdefault("mailboxid", new_mailbox_id())
    if use is not None:
        attrs["special-use"] = use
    if attrs != before:
        tree._write_small(_levels(tree, name), unparse(attrs))
    return FolderAttrs(attrs["mailboxid"], attrs.get("special-use"))


def stored_uses(tree: Any, names: list[str]) -> dict[str, str]:
    """{folder: special use given at CREATE} of these folders (not INBOX). Blocking."""
    out = {}
    for name in names:
        if name == folders.INBOX:
            continue
        try:
            use = read_attrs(tree, name).get("special-use")
        except (StoreRefused, OSError):  # a symlinked ~/mail/.imap: the folder is still listed
            continue
        if use:
            out[name] = use
    return out


class FolderAttrsStore:
    """For ``MboxStore`` (its ``_tree``, ``_folder_lock``, ``blocking``)."""

    def folder_attrs(self, account: Any, name: str, use: str | None = None) -> Any:
        """Deferred[FolderAttrs] of a folder: its MAILBOXID (made at the first look) and the
        special use given at CREATE (``use``: give it now). MailboxNotFound, StoreRefused."""
        try:
            name = folders.normalize(name)
            if use is not None:
                use = check_use(use)
        except InvalidMailboxName as e:
            return defer.fail(e)
        tree = self._tree(account)  # type: ignore[attr-defined]
        lock = self._folder_lock(account)  # type: ignore[attr-defined]
        cache = self.__dict__.setdefault("_attrs_cache", AttrsCache(ATTRS_FILE))
        if use is None and not lock.locked:
            known = cache.get(tree, name)  # a stat on this thread: every SELECT asks
            if known is not None:
                return defer.succeed(known)
        return lock.run(self.blocking, cache.reading, tree, name, load, use)  # type: ignore[attr-defined]


__all__ = ["CREATABLE_USES", "FolderAttrs", "FolderAttrsStore", "check_use", "load",
           "new_mailbox_id", "stored_uses"]
