"""Folder names: checking, normalising and relating them; shared by the memory and mbox stores.

Names cross the store interface as IMAP names decoded to ``str`` (the IMAP layer undoes modified
UTF-7), with '/' as the hierarchy separator. "INBOX" is matched without regard to case, also as
the first level of a longer name ("inbox/Sub" is "INBOX/Sub"). On disk the mbox store writes each
level in modified UTF-7 (``disk_level``), as Dovecot does, so an existing Dovecot tree with
non-ASCII folder names is read as it is.

A name is refused (``InvalidMailboxName``) when it begins with '~' or '/' (as Dovecot refuses
them), has an empty level (trailing or doubled '/'), a level starting with '.' (this also
covers '.' and '..', and keeps clear of dotfiles such as ``.imap`` and ``.subscriptions``), a
level ending in ``.lock`` (the dotlock of a sibling), the level ``mBoX-MeSsAgEs`` (where the
mbox store keeps a parent folder's own mail) or one starting with ``dovecot.`` or
``dovecot-uidvalidity`` (Dovecot's files in ``~/mail``), a control character, a level longer
than ``MAX_LEVEL`` bytes on disk, more than ``MAX_DEPTH`` levels, or more than ``MAX_NAME``
bytes in all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from mailsuite.store.interfaces import InvalidMailboxName

SEP = "/"
INBOX = "INBOX"
#: Where the mbox store keeps the own mail of a folder that also has children (Dovecot's
#: DIRNAME example name): ``~/mail/Work/mBoX-MeSsAgEs``.
MESSAGES_FILE = "mBoX-MeSsAgEs"
MAX_LEVEL = 200  # bytes of one level on disk (file names are at most 255; room for suffixes)
MAX_NAME = 1000  # bytes of the whole name on disk
MAX_DEPTH = 20

#: The ``[mailbox]`` defaults: folder name -> special-use flag.
DEFAULT_SPECIALS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}


@functools.cache
def _codec() -> str:
    import twisted.mail.imap4  # noqa: F401 - registers the codec; imported only when needed

    return "imap4-utf-7"


def disk_level(level: str) -> str:
    """One level as its file name: modified UTF-7 (plain ASCII stays as it is, '&' is '&-')."""
    if level.isascii() and "&" not in level:
        return level
    return level.encode(_codec()).decode("ascii")


def from_disk_level(filename: str) -> str | None:
    """The folder level a file name stands for; None if it is not a valid modified UTF-7 name
    (a file some other program put there, left alone)."""
    try:
        level = filename.encode("ascii").decode(_codec())
    except (UnicodeError, ValueError):
        return None
    return level if disk_level(level) == filename else None


def _bad(name: str, why: str) -> InvalidMailboxName:
    return InvalidMailboxName(f"{name!r}: {why}")


def check_level(level: str, name: str) -> None:
    if not level:
        raise _bad(name, "empty hierarchy level")
    if level in (".", ".."):
        raise _bad(name, f"Contains '{level}' part")
    if level.startswith("."):
        raise _bad(name, "a level may not start with '.'")
    if level.endswith(".lock"):
        raise _bad(name, "a level may not end in '.lock'")
    if level == MESSAGES_FILE or level.startswith(("dovecot.", "dovecot-uidvalidity")):
        raise _bad(name, "reserved name (mbox store and Dovecot files)")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in level):
        raise _bad(name, "control character")
    if len(disk_level(level)) > MAX_LEVEL:
        raise _bad(name, "name too long")


def normalize(name: str) -> str:
    """The canonical form of a mailbox name (INBOX upper case); InvalidMailboxName if unusable."""
    if not isinstance(name, str):
        raise _bad(repr(name), "not a str")
    if name.startswith(("~", "/")):  # as Dovecot: never a path of its own
        raise _bad(name, f"Begins with '{name[0]}'")
    levels = name.split(SEP)
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    if len(levels) > MAX_DEPTH:
        raise _bad(name, "too many levels")
    for level in levels:
        check_level(level, name)
    if sum(len(disk_level(level)) + 1 for level in levels) > MAX_NAME:
        raise _bad(name, "name too long")
    return SEP.join(levels)


def parents(name: str) -> list[str]:
    """The ancestors of a (normalised) name, outermost first: "a/b/c" -> ["a", "a/b"]."""
    levels = name.split(SEP)
    return [SEP.join(levels[:i]) for i in range(1, len(levels))]


def is_under(name: str, parent: str) -> bool:
    """``name`` is a descendant of ``parent`` (not ``parent`` itself)."""
    return name.startswith(parent + SEP)


def renamed(name: str, old: str, new: str) -> str:
    """``name`` (``old`` or a descendant) after ``old`` is renamed to ``new``."""
    return new + name[len(old) :]


def list_order(names: Iterable[str]) -> list[str]:
    """INBOX first, then sorted (what list_mailboxes returns)."""
    return sorted(names, key=lambda n: (n != INBOX, n))


def check_specials(specials: dict[str, str]) -> dict[str, str]:
    """Validated {folder name: special-use flag}; InvalidMailboxName for an unusable name."""
    out = {}
    for name, flag in specials.items():
        norm = normalize(name)
        if norm == INBOX or norm.startswith(INBOX + SEP):
            raise _bad(name, "a special-use folder cannot be INBOX or under it")
        out[norm] = flag
    return out
