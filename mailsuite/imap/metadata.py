"""METADATA (RFC 5464): ``MetadataCommands``, GETMETADATA and SETMETADATA for ``IMAPServer``.

Offered with ``[imap] imap_metadata = yes`` (Dovecot's key and default, no), after login; the
capability ``METADATA`` covers server entries (mailbox ``""``) and mailbox entries, so
METADATA-SERVER, its subset, is not listed separately (RFC 5464 1). Entries are stored by
``store/metadata.py`` (beside the mailbox's index: they go with DELETE and move with RENAME).

- entry names: ``/private/...`` or ``/shared/...``, case-insensitive (kept in lower case),
  printable ASCII without ``*`` and ``%``, no empty component, no trailing ``/``; anything else
  is BAD. ``/private`` and ``/shared`` alone may be asked for (with DEPTH), not set.
- GETMETADATA (MAXSIZE n) (DEPTH 0|1|infinity): an entry asked for with DEPTH 0 is listed with
  NIL when it has no value; with DEPTH 1 / infinity only entries that have values are listed
  (RFC 5464 4.2.2's example); values longer than MAXSIZE are left out and the OK says
  ``[METADATA LONGENTRIES n]`` (n: the longest left out).
- SETMETADATA: all changes or none; NIL removes; past the limits ``NO [METADATA MAXSIZE n]``
  (a value too long) and ``NO [METADATA TOOMANY]``; the server's ``/shared/admin`` is read-only
  (RFC 5464 3.2.1.1). ``/private`` entries are supported, so ``[METADATA NOPRIVATE]`` never
  applies. Values are quoted strings or literals (literal8, ``~{n}``, comes with BINARY).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailsuite.imap.encode import literal, nstring
from mailsuite.imap.parser import Cursor, Item, ParseError, String, encode_mailbox, mailbox_name
from mailsuite.imap.session import states
from mailsuite.store import folders
from mailsuite.store.events import Event, publish_for
from mailsuite.store.interfaces import StoreError
from mailsuite.store.metadata import MAX_VALUE, TooBig, TooMany, metadata_of

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

INFINITY = -1
_ENTRY_RE = re.compile(rb"/(private|shared)((/[\x21-\x24\x26-\x29\x2b-\x2e\x30-\x7e]+)*)\Z")
_ATOM_SAFE = re.compile(rb"[^(){ %*\"\\\]\x00-\x20\x7f-\xff]+\Z")
MAX_NAME = 1024  # bytes of an entry name


def entry_name(raw: Item, settable: bool) -> str:
    """The entry name (lower case) of a command argument; ParseError if it is none."""
    if not isinstance(raw, bytes) or len(raw) > MAX_NAME:
        raise ParseError("bad entry name")
    name = raw.lower()
    m = _ENTRY_RE.match(name)
    if m is None or (settable and not m.group(2)):
        raise ParseError("bad entry name: " + name.decode("ascii", "replace"))
    return name.decode("ascii")


def _options(items: list[Item]) -> tuple[int | None, int]:
    """(MAXSIZE, DEPTH) of GETMETADATA's options."""
    maxsize, depth = None, 0
    if not items or len(items) % 2:
        raise ParseError("bad GETMETADATA options")
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not isinstance(key, bytes) or isinstance(key, String) or not isinstance(value, bytes):
            raise ParseError("bad GETMETADATA option")
        word = key.upper()
        if word == b"MAXSIZE" and value.isdigit() and len(value) < 12:
            maxsize = int(value)
        elif word == b"DEPTH" and value.lower() in (b"0", b"1", b"infinity"):
            depth = INFINITY if value.lower() == b"infinity" else int(value)
        else:
            raise ParseError("bad GETMETADATA option: " + word.decode("ascii", "replace"))
    return maxsize, depth


def select(entries: dict[str, bytes], names: list[str], depth: int,
           maxsize: int | None) -> tuple[list[tuple[str, bytes | None]], int]:
    """What GETMETADATA lists, and the length of the longest value MAXSIZE left out."""
    out: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    longest = 0
    for name in names:
        found = [name] if depth == 0 or name in entries else []
        if depth:
            prefix = name + "/"
            found += [k for k in sorted(entries) if k.startswith(prefix)
                      and (depth == INFINITY or "/" not in k[len(prefix):])]
        for key in found:
            if key in seen:
                continue
            seen.add(key)
            value = entries.get(key)
            if value is not None and maxsize is not None and len(value) > maxsize:
                longest = max(longest, len(value))
                continue
            out.append((key, value))
    return out, longest


def _value(value: bytes | None) -> bytes:
    if value is not None and b"\0" in value:
        return b"~" + literal(value)  # literal8 (RFC 3516): a NUL cannot be in a literal
    return nstring(value)


def entry_text(name: str) -> bytes:
    """An entry name as a reply gives it (an atom when it can be, else quoted)."""
    raw = name.encode("ascii")
    return raw if _ATOM_SAFE.match(raw) else nstring(raw)


def publish_change(session: Any, mailbox: str | None, names: list[str]) -> None:
    """Tell the account's event bus (NOTIFY's MailboxMetadataChange and ServerMetadataChange,
    notifymeta.py) that ``session`` set these entries of ``mailbox`` (None: the server's)."""
    try:
        name = "" if mailbox is None else folders.normalize(mailbox)
    except StoreError:
        return
    publish_for(session, Event("metadata", name, source=session, changes=tuple(names)))


def _literal8_joined(items: list[Any]) -> list[Any]:
    """A value sent as literal8 (RFC 5464 ``value = nstring / literal8``: ``~{n}``) is read by
    ``paren_list`` as the atom ``~`` and the literal after it: one value again."""
    out: list[Any] = []
    pending = False
    for item in items:
        if pending:
            if not isinstance(item, String):
                raise ParseError("expected a literal after ~")
            out.append(item)
            pending = False
        elif not isinstance(item, (String, list)) and item == b"~":
            pending = True
        else:
            out.append(item)
    if pending:
        raise ParseError("expected a literal after ~")
    return out


class MetadataCommands(_Base):
    """GETMETADATA and SETMETADATA (RFC 5464) for ``IMAPServer``."""

    def own_capabilities(self) -> dict[bytes, Any]:
        on = self.state != "unauth" and self.config.imap.imap_metadata
        return {b"METADATA": None} if on else {}

    def _metadata_off(self, tag: bytes) -> bool:
        if self.config.imap.imap_metadata:
            return False
        self.sendBadResponse(tag, b"Unknown command.")
        return True

    def _mailbox(self, args: Cursor) -> tuple[str | None, bytes]:
        """(mailbox, or None for the server's entries; the name as replies give it)."""
        raw = args.astring()
        if raw == b"":
            return None, b'""'
        name = mailbox_name(raw, args.utf8)
        return name, encode_mailbox(name, self.utf8_names)

    @states("auth", "select")
    async def cmd_GETMETADATA(self, tag: bytes, args: Cursor) -> None:
        if self._metadata_off(tag):
            return
        args.sp()
        maxsize, depth = None, 0
        if args.peek() == b"(":
            maxsize, depth = _options(args.paren_list())
            args.sp()
        mailbox, shown = self._mailbox(args)
        args.sp()
        raw = args.paren_list() if args.peek() == b"(" else [args.astring()]
        args.end()
        if not raw:
            raise ParseError("no entries")
        names = [entry_name(item, settable=False) for item in raw]
        entries = await metadata_of(self.account.store).get(self.account.account, mailbox)
        found, longest = select(entries, names, depth, maxsize)
        if found:
            listed = b" ".join(entry_text(k) + b" " + _value(v) for k, v in found)
            self.sendUntaggedResponse(b"METADATA " + shown + b" (" + listed + b")")
        code = b"[METADATA LONGENTRIES %d] " % longest if longest else b""
        self.sendPositiveResponse(tag, code + b"GETMETADATA completed.")

    @states("auth", "select")
    async def cmd_SETMETADATA(self, tag: bytes, args: Cursor) -> None:
        if self._metadata_off(tag):
            return
        args.sp()
        mailbox, _ = self._mailbox(args)
        args.sp()
        items = _literal8_joined(args.paren_list())
        args.end()
        if not items or len(items) % 2:
            raise ParseError("expected (entry value ...)")
        changes: dict[str, bytes | None] = {}
        for key, value in zip(items[::2], items[1::2], strict=True):
            name = entry_name(key, settable=True)
            if isinstance(value, String):
                changes[name] = bytes(value)
            elif isinstance(value, bytes) and value.upper() == b"NIL":
                changes[name] = None
            else:
                raise ParseError("expected a string or NIL as the value of " + name)
        if mailbox is None and "/shared/admin" in changes:
            self.sendNegativeResponse(tag, b"[NOPERM] /shared/admin is read-only.")
            return
        try:
            await metadata_of(self.account.store).set(self.account.account, mailbox, changes)
        except TooBig:
            self.sendNegativeResponse(tag, b"[METADATA MAXSIZE %d] Value too long." % MAX_VALUE)
            return
        except TooMany:
            self.sendNegativeResponse(tag, b"[METADATA TOOMANY] Too many entries.")
            return
        publish_change(self, mailbox, list(changes))
        self.sendPositiveResponse(tag, b"SETMETADATA completed.")
