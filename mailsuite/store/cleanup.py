"""What a killed server leaves in the spool directory, removed at start.

- ``USER.lock``: a dotlock no live program holds (``locking.stale_dotlock``: it names a
  process of this host that is gone, or this very process without it holding it, or it is
  empty and older than a few seconds). A lock of another live program stays.
- ``.USER.mailsuite-rewrite``: the new file of an expunge that was killed before its rename
  (it can be as big as the mailbox). It is removed under the mailbox's dotlock, so never while
  a rewrite (ours, in this or another process) is writing it.

Blocking (a listing of the spool directory): run it in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mailsuite.accounts import Account
from mailsuite.store import locking

log = Logger()

REWRITE_SUFFIX = ".mailsuite-rewrite"


def rewrite_path(mbox_path: str) -> str:
    """Where the rewrite of ``mbox_path`` writes its new file: ``.NAME.mailsuite-rewrite``."""
    directory, name = os.path.split(mbox_path)
    return os.path.join(directory, f".{name}{REWRITE_SUFFIX}")


def remove_rewrite_leftover(mbox_path: str, dir_fd: int | None = None) -> bool:
    """Remove the rewrite file of ``mbox_path`` if there is one; call it holding the mailbox's
    dotlock (no rewrite can be running then). True if one was removed. With ``dir_fd`` (the
    mailbox's directory, walked by ``safepath``) the file is removed by its name in it."""
    path = rewrite_path(mbox_path)
    try:
        os.unlink(os.path.basename(path) if dir_fd is not None else path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    log.info("removed {path}, left by a rewrite that was cut short",
             path=rewrite_path(mbox_path))
    return True


def spool_directory(mailbox_config: Any) -> str | None:
    """The one directory every INBOX is in (``/var/mail`` for ``INBOX=/var/mail/%u``), or None
    when INBOXes are not all in one directory (under the homes)."""
    probes = [Account(name, 0, 0, f"/nonexistent/{name}") for name in ("probe-a", "probe-b")]
    try:
        a, b = (os.path.dirname(mailbox_config.inbox_path(p)) for p in probes)
    except ValueError:
        return None
    return a if a == b else None


def clean_spool(
    directory: str, stale_after: float = locking.DEFAULT_STALE_AFTER,
    now: Callable[[], float] | None = None,
) -> list[str]:
    """Remove the stale dotlocks and rewrite leftovers in ``directory``; the paths removed."""
    clock = time.time if now is None else now
    try:
        names = os.listdir(directory)
    except OSError as e:
        log.warn("cannot look for stale locks in {dir}: {e}", dir=directory, e=e.strerror)
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(directory, name)
        if name.endswith(".lock") and locking.stale_dotlock(path, stale_after, clock):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            log.info("removed stale dotlock {path}", path=path)
            removed.append(path)
        elif name.startswith(".") and name.endswith(REWRITE_SUFFIX):
            mbox = os.path.join(directory, name[1 : -len(REWRITE_SUFFIX)])
            lock = mbox + ".lock"
            if not locking.try_dotlock(lock, stale_after, clock):
                continue  # a rewrite is running: it removes its own file
            try:
                if remove_rewrite_leftover(mbox):
                    removed.append(path)
            finally:
                locking.release_dotlock(lock)
    return removed
