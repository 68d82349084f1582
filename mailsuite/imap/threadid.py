"""OBJECTID's THREADID (RFC 8474 5.2): the FETCH item and the SEARCH key.

A thread is a tree of THREAD=REFERENCES' parent/child links (RFC 5256 steps 1 and 2:
Message-ID, References, In-Reply-To; thread.build_tree), without the grouping by subject of
step 5 (which depends on the dates and order of the roots, so a thread's id would move when
a message arrives). The id is made of the thread's root, from stored data only, so it is the
same in every session, after a restart and in every mailbox holding the thread:

- the root has a Message-ID (a message of the mailbox, or one referred to but not here): ``T``
  and the first 24 hex digits of the SHA-256 of that Message-ID;
- the root is a message without one (so alone or with replies that cannot name it): ``T`` and
  its EMAILID fingerprint (``IMailbox.email_id``).

The map of a view's messages is made from sortkeys' records (the header fields SORT and
THREAD read, cached per mailbox), in a thread for big mailboxes (``sortkeys.off_reactor``),
and kept with the view's SORT and THREAD answers (made again when the messages change). FETCH
THREADID is an extension item with a ``prepare`` (fetch.ITEM_PARSERS: never the listing fast
path of fetchfields), SEARCH THREADID a search key with a ``prepare``.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from typing import Any

from mailsuite.imap.fetch import ITEM_PARSERS, FetchItem, Piece
from mailsuite.imap.search import ExtraKey, register_key
from mailsuite.imap.sortkeys import THREAD_KEYS, off_reactor, records, view_keys
from mailsuite.imap.thread import Found, Node, build_tree, quiet_tree

_REQUEST = ("THREADID",)  # the key of the map among the view's kept answers
_ITEM_RE = re.compile(rb"THREADID(?=[ )]|\Z)", re.I)

#: per UID: the root's Message-ID (str), or the UID of a root without one (int)
Roots = dict[int, str | int]


def thread_roots(found: Found) -> Roots:
    """What names each message's thread (no recursion: chains may be as long as the
    mailbox); runs in a thread for big mailboxes, touching nothing but ``found``."""
    table: dict[str, Node] = {}
    return quiet_tree(lambda: build_tree(found, table), lambda roots: _names(roots, table))


def _names(roots: list[Node], table: dict[str, Node]) -> Roots:
    names: dict[int, str] = {id(node): mid for mid, node in table.items()}
    out: Roots = {}
    for root in roots:
        if root.msg is not None and not root.msg.message_id:
            name: str | int = root.msg.uid
        elif root.msg is not None:
            name = root.msg.message_id
        else:
            name = names.get(id(root), "")
        stack = [root]
        while stack:
            node = stack.pop()
            if node.msg is not None:
                out[node.msg.uid] = name
            stack.extend(node.children)
    return out


#: per view: (what its messages were: UIDVALIDITY, count, last UID; the map made for them),
#: so that the prepare of each message of a FETCH is one comparison
_latest: weakref.WeakKeyDictionary[Any, tuple[tuple[int, int, int], Roots]] = (
    weakref.WeakKeyDictionary())


async def prepare(view: Any, *_: Any) -> None:
    """The view's map made (or found kept) for its messages as they are now (a message gone
    since changes no other's root: its children still name its Message-ID)."""
    stamp = (int(view.uid_validity), view.count(), view._last_uid())  # no pass over the rows
    kept = _latest.get(view)
    if kept is not None and kept[0] == stamp:
        return
    found = await records(view, THREAD_KEYS)
    keys = view_keys(view)
    roots = keys.result(_REQUEST)
    if roots is None:
        roots = await off_reactor(len(found), thread_roots, found)
        keys.keep(_REQUEST, roots)
    _latest[view] = (stamp, roots)


def thread_id(view: Any, uid: int) -> bytes | None:
    """The THREADID of ``uid`` (``prepare`` awaited before), None if not known (expunged)."""
    kept = _latest.get(view)
    name = kept[1].get(uid) if kept is not None else None
    if name is None:
        return None
    if isinstance(name, str):
        return b"T" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[
            :24].encode("ascii")
    get = getattr(view.mailbox, "email_id", None)
    found = get(name) if get is not None else None
    if found is None:
        return b"T%x-%d" % (view.uid_validity, name)
    return b"T" + str(found).encode("ascii")


def _render(view: Any, uid: int, raw: bytes | None, header: bytes) -> list[Piece]:
    found = thread_id(view, uid)
    return [b"THREADID NIL" if found is None else b"THREADID (" + found + b")"]


def parse_item(text: bytes, pos: int) -> tuple[FetchItem, int] | None:
    m = _ITEM_RE.match(text, pos)
    if m is None:
        return None
    return FetchItem("THREADID", render=_render, prepare=prepare), m.end()


def _match(key: tuple[Any, ...], c: Any) -> bool:
    return thread_id(c.view, c.uid) == key[1]


ITEM_PARSERS.append(parse_item)
register_key("THREADID", ExtraKey(lambda p: (p.next().value,), _match, prepare=prepare))
