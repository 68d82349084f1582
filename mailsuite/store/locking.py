"""Mailbox locking as Postfix local(8), mutt and Dovecot do it: ``PATH.lock`` dotlock + fcntl lock.

Blocking code: call it from a thread (a ``mailsuite.threads.Blocking``), never on the reactor.

Deadlock freedom: Postfix takes the dotlock then the fcntl lock; mutt takes them the other way
round. We never *wait* while holding one of them: take the dotlock, try the fcntl lock without
waiting, and if it is busy give the dotlock back, sleep (exponential back-off) and start over.
Waiting is bounded by ``timeout`` and ends in ``LockTimeout`` (a StoreError).

The fcntl lock is an open-file-description lock (``F_OFD_SETLK``) where the kernel has them: it
conflicts with the classic POSIX locks of Postfix and mutt, and unlike those it is not dropped
when another thread of this process closes some other descriptor of the same file.

A dotlock older than ``stale_after`` seconds (mtime) is taken to be left by a crashed program
and removed, as Postfix and mutt do. Holders of long locks call ``HeldLock.touch()`` to keep
their dotlock fresh.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mailsuite.store.interfaces import StoreError

DEFAULT_STALE_AFTER = 300.0

_BUSY = (errno.EAGAIN, errno.EACCES)
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi4x"


class LockTimeout(StoreError):
    """The mailbox stayed locked by someone else for longer than the lock timeout."""


def _set_lock(fd: int, kind: int) -> bool:
    """Try to set (or clear, F_UNLCK) a whole-file lock without waiting; False if busy."""
    try:
        if _OFD_SETLK is not None:
            fcntl.fcntl(fd, _OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
        else:  # pragma: no cover - kernels without OFD locks
            op = {fcntl.F_WRLCK: fcntl.LOCK_EX, fcntl.F_RDLCK: fcntl.LOCK_SH}.get(
                kind, fcntl.LOCK_UN
            )
            fcntl.lockf(fd, op | (fcntl.LOCK_NB if op != fcntl.LOCK_UN else 0))
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    return True


def try_fcntl_lock(fd: int, exclusive: bool = True) -> bool:
    """Take the fcntl lock on ``fd`` if it is free (write lock, or read lock if not exclusive)."""
    return _set_lock(fd, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK)


def fcntl_unlock(fd: int) -> None:
    _set_lock(fd, fcntl.F_UNLCK)


def try_dotlock(
    lock_path: str,
    stale_after: float,
    now: Callable[[], float] = time.time,
    dir_fd: int | None = None,
) -> bool:
    """Create ``lock_path`` with O_CREAT|O_EXCL (no link(2): works on every local file system).

    Returns False if someone else holds it; breaks it first if it is stale. Errors other than
    "exists" (no permission on the spool directory, read-only file system) raise StoreError:
    without the dotlock a rewrite would not be safe against Postfix. With ``dir_fd`` (the
    mailbox's directory, held open: ``safepath``) ``lock_path`` is a name in it.
    """
    for _ in range(2):
        try:
            fd = os.open(
                lock_path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except FileExistsError:
            try:
                st = os.lstat(lock_path, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            if now() - st.st_mtime <= stale_after:
                return False
            try:
                os.unlink(lock_path, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise StoreError(f"cannot create dotlock {lock_path}: {e.strerror}") from e
        try:
            os.write(fd, b"%d\n" % os.getpid())
        finally:
            os.close(fd)
        return True
    return False


def release_dotlock(lock_path: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(lock_path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


@dataclass
class HeldLock:
    """Both locks on one mailbox; ``fd`` is the locked open mailbox (None: the file is missing)."""

    path: str
    fd: int | None
    dir_fd: int | None = None  # ``path`` is a name in this directory

    @property
    def lock_path(self) -> str:
        return self.path + ".lock"

    def touch(self) -> None:
        """Keep the dotlock from looking stale during a long rewrite."""
        try:
            os.utime(self.lock_path, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            pass


def _same_file(fd: int, path: str, dir_fd: int | None = None) -> bool:
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


@contextmanager
def locked_mailbox(
    path: str,
    opener: Callable[[], int | None],
    *,
    exclusive: bool = True,
    timeout: float = 30.0,
    stale_after: float = DEFAULT_STALE_AFTER,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    dir_fd: int | None = None,
) -> Iterator[HeldLock]:
    """Lock the mailbox at ``path``: dotlock, then ``opener()`` opens it, then the fcntl lock.

    ``opener`` returns a descriptor (closed here when done) or None when the file does not exist
    (then only the dotlock is held). After locking, the descriptor must still be the file at
    ``path`` (another program may have replaced it meanwhile): if not, open again.
    Both locks are always released, the fcntl lock first, as Postfix does. With ``dir_fd``
    (the mailbox's directory, held open) ``path`` is the mailbox's name in it.
    """
    deadline = clock() + timeout
    delay = 0.01
    lock_path = path + ".lock"
    while True:
        if try_dotlock(lock_path, stale_after, dir_fd=dir_fd):
            fd = None
            try:
                fd = opener()
                if fd is None or (
                    try_fcntl_lock(fd, exclusive) and _same_file(fd, path, dir_fd)
                ):
                    held = HeldLock(path, fd, dir_fd)
                    try:
                        yield held
                    finally:
                        if fd is not None:
                            fcntl_unlock(fd)
                    return
            finally:
                if fd is not None:
                    os.close(fd)
                release_dotlock(lock_path, dir_fd)
        if clock() >= deadline:
            raise LockTimeout(f"{path} is locked by another program (waited {timeout:g}s)")
        sleep(delay)
        delay = min(delay * 2, 0.5)
