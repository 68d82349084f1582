"""Hibernation of IMAP sessions in IDLE (Dovecot's imap-hibernate).

A session that has been in IDLE for ``[imap] imap_hibernate_timeout`` with nothing in flight
leaves the process that holds the user's mail: what its client has been told is written down
(``snapshot``: the IDLE tag, the selected mailbox, the UIDs and flags the client knows, the
byte counts for the log line) and the files a change would touch are watched (``watch``: an
inotify descriptor that outlives the process that made it). Whoever keeps the client's
connection meanwhile (the network process of a privilege-separated server) answers nothing
but keep-alives; on the first byte from the client or the first event of the watch the
session is thawed (``thaw``) in a process of the user's again: the mailbox is opened anew and
what changed since the snapshot (EXPUNGE, EXISTS, FETCH FLAGS) is sent as IDLE sends it.

The snapshot comes back from a less trusted process: ``decode`` checks every field and bounds
every size (it only ever names the same user's mailboxes: the master binds a session to its
account).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from collections.abc import Iterable
from typing import Any

VERSION = 1
#: the most bytes a snapshot may take (a 1,000,000-message mailbox with scattered flags fits)
MAX_STATE = 16 * 1024 * 1024
#: the most messages, and distinct flag sets, a snapshot may name
MAX_MESSAGES = 2_000_000
MAX_FLAG_SETS = 4096
MAX_FLAG = 256
_ATOM = re.compile(r"[A-Z0-9=+.-]+")  # an ENABLE name as general.cmd_ENABLE keeps it

# inotify(7)
IN_MODIFY, IN_ATTRIB, IN_MOVED_TO = 0x2, 0x4, 0x80
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
# what a change writes, not what a reader does (opening the mbox to read and lock it, and
# closing it, is no change: IN_CLOSE_WRITE would wake every sleeper of a mailbox whenever
# one of them wakes); a file renamed over the mbox changes its link count (IN_ATTRIB)
_FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
_DIR_EVENTS = IN_MODIFY | IN_MOVED_TO | IN_DELETE_SELF


class BadState(ValueError):
    """A snapshot that is not one ``snapshot`` made."""


def uid_ranges(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1:3,7`` (ascending UIDs)."""
    out: list[str] = []
    start = prev = -1
    for uid in uids:
        if uid == prev + 1 and start >= 0:
            prev = uid
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def parse_ranges(text: str, limit: int = MAX_MESSAGES) -> list[int]:
    """The UIDs of ``uid_ranges``'s text, checked: ascending, positive, at most ``limit``."""
    if not isinstance(text, str):
        raise BadState("a UID set is not text")
    out: list[int] = []
    last = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise BadState(f"bad UID range {part[:20]!r}")
        a, b = int(lo), int(hi or lo)
        if a <= last or b < a or len(out) + (b - a + 1) > limit:
            raise BadState("UIDs out of order or too many")
        out.extend(range(a, b + 1))
        last = b
    return out


def snapshot(session: Any) -> bytes:
    """What the client of this IMAP session in IDLE has been told, as bytes for ``decode``."""
    state: dict[str, Any] = {
        "v": VERSION, "tag": session._idle_tag.decode("latin-1"),
        "in": session._bytes_in, "out": session._bytes_out, "box": None,
        # what ENABLE turned on (CONDSTORE, QRESYNC...)
        "en": sorted(n.decode("latin-1") for n in getattr(session, "enabled", ())),
    }
    view = session.view
    if view is not None:
        groups: dict[frozenset[str], list[int]] = {}
        rows = view.rows()
        for row in rows:
            groups.setdefault(row.flags, []).append(row.uid)
        state.update({
            "box": view.name, "ro": view.readonly, "uv": view.uid_validity,
            "next": view.uid_next,
            "uids": uid_ranges(row.uid for row in rows),
            "flags": [[sorted(flags), uid_ranges(uids)] for flags, uids in groups.items()
                      if flags],
            "recent": uid_ranges(sorted(u for u in (r.uid for r in rows) if view.is_recent(u))),
            "keywords": sorted(view.told_keywords()),
        })
    return json.dumps(state, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """A snapshot back, every field checked (BadState when it is not one of ours)."""
    if len(data) > MAX_STATE:
        raise BadState("too big")
    try:
        state = json.loads(data)
    except ValueError as e:
        raise BadState(f"not a snapshot: {e}") from None
    if not isinstance(state, dict) or state.get("v") != VERSION:
        raise BadState("not a snapshot of this version")
    tag, box = state.get("tag"), state.get("box")
    if not isinstance(tag, str) or not 0 < len(tag) <= 256 or not tag.isprintable() or \
            " " in tag:
        raise BadState("bad IDLE tag")
    for key in ("in", "out"):
        if not isinstance(state.get(key), int) or state[key] < 0:
            raise BadState(f"bad byte count {key}")
    enabled = state.get("en", [])
    if not isinstance(enabled, list) or len(enabled) > 32 or any(
            not isinstance(n, str) or not 0 < len(n) <= 64 or not _ATOM.fullmatch(n)
            for n in enabled):
        raise BadState("bad ENABLE names")
    out: dict[str, Any] = {"tag": tag.encode("latin-1"), "in": state["in"],
                           "out": state["out"], "box": None,
                           "enabled": {n.encode("ascii") for n in enabled}}
    if box is None:
        return out
    if not isinstance(box, str) or not 0 < len(box) <= 1024 or \
            not isinstance(state.get("uv"), int) or not isinstance(state.get("ro"), bool) or \
            not isinstance(state.get("next"), int) or state["next"] < 1:
        raise BadState("bad selected mailbox")
    if not box.isprintable():
        raise BadState("bad mailbox name")  # the store checks the rest when it opens it
    uids = parse_ranges(state.get("uids", ""))
    known = set(uids)
    flags: dict[int, frozenset[str]] = {}
    groups = state.get("flags")
    if not isinstance(groups, list) or len(groups) > MAX_FLAG_SETS:
        raise BadState("bad flag groups")
    for group in groups:
        if not (isinstance(group, list) and len(group) == 2 and isinstance(group[0], list)):
            raise BadState("bad flag group")
        names = group[0]
        if any(not isinstance(f, str) or not 0 < len(f) <= MAX_FLAG for f in names):
            raise BadState("bad flag name")
        members = frozenset(names)
        for uid in parse_ranges(group[1]):
            if uid not in known or uid in flags:
                raise BadState("flags of a UID not in the view")
            flags[uid] = members
    recent = set(parse_ranges(state.get("recent", "")))
    keywords = state.get("keywords")
    if not recent <= known or not isinstance(keywords, list) or len(keywords) > MAX_FLAG_SETS \
            or any(not isinstance(k, str) or not 0 < len(k) <= MAX_FLAG for k in keywords):
        raise BadState("bad recent UIDs or keywords")
    empty: frozenset[str] = frozenset()
    out.update({"box": box, "ro": state["ro"], "uv": state["uv"], "next": state["next"],
                "told": [(uid, flags.get(uid, empty)) for uid in uids],
                "recent": recent, "keywords": set(keywords)})
    return out


def hibernatable(session: Any) -> bool:
    """The session is in IDLE with nothing else going on: no command reply, literal, unsent
    output or queued input, and (when a mailbox is selected) a mailbox whose files can be
    watched; and none of what the snapshot cannot hold: COMPRESS's zlib streams, UTF-8 names
    (UTF8=ACCEPT, IMAP4rev2), NOTIFY's watch, a SEARCHRES result, a CONTEXT update."""
    return (session._idle_tag is not None and not session._lost and session._corked is None
            and getattr(session, "_deflate", None) is None  # COMPRESS: zlib state stays
            and not getattr(session, "utf8_names", False)  # UTF8=ACCEPT: not in the snapshot
            and session._unsent_wait is None and not session._buffer
            and not session.transport.disconnecting
            and getattr(session, "_notify", None) is None  # NOTIFY's watch is this process's
            and not getattr(session, "_contexts", None)  # CONTEXT's UPDATE: not in the snapshot
            and (session.view is None or (bool(watch_paths(session.view))
                 and not getattr(session.view, "saved_search", None))))  # SEARCHRES: not kept


def watch_paths(view: Any) -> list[tuple[str, bool]]:
    """(path, is a directory) of what a change to the view's mailbox writes."""
    paths = getattr(view.mailbox, "watch_paths", None)
    return list(paths()) if paths is not None else []


_libc: Any = None


def _inotify() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def watch(paths: list[tuple[str, bool]]) -> int:
    """An inotify descriptor watching ``paths`` (files: written, replaced, removed;
    directories: a file written or moved in); OSError when one cannot be watched."""
    libc = _inotify()
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    try:
        for path, is_dir in paths:
            mask = _DIR_EVENTS if is_dir else _FILE_EVENTS
            if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
                e = ctypes.get_errno()
                raise OSError(e, f"{path}: {os.strerror(e)}")
    except BaseException:
        os.close(fd)
        raise
    return fd
