"""What a killed server leaves in the spool directory, removed at start.

- ``USER.lock``: a dotlock no live program holds (``locking.stale_dotlock``: it names a
  process of this host that is gone, or this very process without it holding it, or it is
  empty and older than a few seconds). A lock of another live program stays.
- ``.USER.mailsuite-expunge``: the journal of an in-place expunge that was killed: it is
  finished (``mboxinplace.recover``) under the mailbox's locks, before the stale dotlock is
  removed.
- ``.USER.mailsuite-rewrite``: the new file of an expunge that was killed before its rename
  (it can be as big as the mailbox). It is removed under the mailbox's dotlock, so never while
  a rewrite (ours, in this or another process) is writing it.

Blocking (a listing of the spool directory): run it in a thread.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mailsuite.accounts import Account
from mailsuite.store import locking, mboxinplace

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


def finish_inplace(
    directory: str, name: str, stale_after: float, clock: Callable[[], float]
) -> bool:
    """Finish the in-place expunge of ``directory/name`` a crash cut short (``mboxinplace``),
    under the mailbox's locks; False when another live program holds them (it is left for
    the next open) or the mailbox is not a plain file."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with locking.locked_mailbox(
            name, lambda: _open_plain(name, dir_fd), exclusive=True, timeout=1.0,
            stale_after=stale_after, dir_fd=dir_fd,
        ) as held:
            if held.fd is None:
                return False
            return mboxinplace.recover(held.fd, dir_fd, name, held.touch)
    except (locking.LockTimeout, OSError) as e:
        log.warn("cannot finish the expunge of {path} yet: {e}",
                 path=os.path.join(directory, name), e=e)
        return False
    finally:
        os.close(dir_fd)


def _open_plain(name: str, dir_fd: int) -> int | None:
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    return fd


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
    """Remove the stale dotlocks and rewrite leftovers in ``directory``, and finish the
    in-place expunges a crash cut short (their journals, each before the dotlock it left is
    removed: ``finish_inplace``); the paths removed (journals finished included)."""
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
        elif name.startswith(".") and name.endswith(mboxinplace.JOURNAL_SUFFIX):
            # before the dotlock the crash left is removed (``.`` sorts first): no delivery
            # comes between (a message appended then would be cut off with the tail)
            if finish_inplace(directory, name[1 : -len(mboxinplace.JOURNAL_SUFFIX)],
                              stale_after, clock):
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
