"""Mailbox locking as Postfix local(8), mutt and Dovecot do it: ``PATH.lock`` dotlock + fcntl lock.

Blocking code: call it from a thread (a ``mailsuite.threads.Blocking``), never on the reactor.

Deadlock freedom: Postfix takes the dotlock then the fcntl lock; mutt takes them the other way
round. We never *wait* while holding one of them: take the dotlock, try the fcntl lock without
waiting, and if it is busy give the dotlock back, sleep (exponential back-off) and start over.
Waiting is bounded by ``timeout`` and ends in ``LockTimeout`` (a StoreError).

The fcntl lock is an open-file-description lock (``F_OFD_SETLK``) where the kernel has them: it
conflicts with the classic POSIX locks of Postfix and mutt, and unlike those it is not dropped
when another thread of this process closes some other descriptor of the same file.

A dotlock left by a crashed program is broken (``stale_dotlock``): at once when it names a
process of this host that is gone (``PID`` as liblockfile and we write it, or Dovecot's
``PID:HOST``) or this process without it holding that lock (a previous life of the server with
the same pid, in a container), as Dovecot and liblockfile do; after ``NO_PID_STALE_AFTER``
seconds when it names no process (an empty file, as Postfix's local(8) makes them; ours hold
our pid from their first instant: written to an O_TMPFILE, then linked); else when older than
``stale_after`` seconds (mtime), as Postfix and mutt do. Holders of long locks call
``HeldLock.touch()`` to keep their dotlock fresh.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from mailsuite.store.interfaces import StoreError

DEFAULT_STALE_AFTER = 300.0
NO_PID_STALE_AFTER = 30.0

_BUSY = (errno.EAGAIN, errno.EACCES)
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi4x"


class LockTimeout(StoreError):
    """The mailbox stayed locked by someone else for longer than the lock timeout;
    ``lock_path`` is its dotlock (waiters may retry when it goes)."""

    def __init__(self, message: str, lock_path: str = "") -> None:
        super().__init__(message)
        self.lock_path = lock_path


#: The dotlocks this process holds now (a lock naming our pid and not in here is stale), by
#: their directory's (device, inode) and name: the same for a path and a (dir_fd, name) pair.
_held: set[tuple[int, int, str]] = set()
_held_guard = threading.Lock()


HeldKey = tuple[int, int, str]


def held_key(
    lock_path: str, dir_fd: int | None = None, dir_ident: tuple[int, int] | None = None
) -> HeldKey:
    """The key of a dotlock in ``_held``; ``dir_ident``: its directory's (st_dev, st_ino) when
    the caller knows it (``safepath.Dir.ident``), else it is looked up."""
    if dir_ident is None:
        st = os.stat(os.path.dirname(os.path.abspath(lock_path))) if dir_fd is None \
            else os.fstat(dir_fd)
        dir_ident = st.st_dev, st.st_ino
    return *dir_ident, os.path.basename(lock_path)


def _hostname() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def lock_owner(lock_path: str, dir_fd: int | None = None) -> int | None:
    """The pid of this host a dotlock names (``PID`` or Dovecot's ``PID:HOST``), else None
    (empty, unreadable, or another host's)."""
    try:
        fd = os.open(
            lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    pid, _, host = text.partition(":")
    if not pid.isdigit() or int(pid) <= 0 or (host and host != _hostname()):
        return None
    return int(pid)


def stale_dotlock(
    lock_path: str,
    stale_after: float,
    now: Callable[[], float] = time.time,
    dir_fd: int | None = None,
) -> bool:
    """Whether the dotlock at ``lock_path`` (a name in ``dir_fd`` if given) was left by a
    program that is gone (see the module docstring); False if there is none."""
    try:
        st = os.lstat(lock_path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    age = now() - st.st_mtime
    if age > stale_after:
        return True
    pid = lock_owner(lock_path, dir_fd)
    if pid is None:
        return st.st_size == 0 and age > min(NO_PID_STALE_AFTER, stale_after)
    if pid == os.getpid():
        key = held_key(lock_path, dir_fd)
        with _held_guard:
            return key not in _held
    return not _pid_alive(pid)


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
    key: HeldKey | None = None,
) -> bool:
    """Create ``lock_path`` holding our pid: an O_TMPFILE linked in (``_create_dotlock``), or
    where that cannot be, O_CREAT|O_EXCL then the pid written.

    Returns False if someone else holds it; breaks it first if it is stale. Errors other than
    "exists" (no permission on the spool directory, read-only file system) raise StoreError:
    without the dotlock a rewrite would not be safe against Postfix. With ``dir_fd`` (the
    mailbox's directory, held open: ``safepath``) ``lock_path`` is a name in it. ``key``: its
    ``held_key``, if the caller has it.
    """
    for _ in range(2):
        try:
            made = _create_dotlock(lock_path, dir_fd, key)
            if made is not None:
                return made
            fd = os.open(
                lock_path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except FileExistsError:
            try:
                os.lstat(lock_path, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            if not stale_dotlock(lock_path, stale_after, now, dir_fd):
                return False
            with suppress(FileNotFoundError):
                os.unlink(lock_path, dir_fd=dir_fd)
            continue
        except OSError as e:
            raise StoreError(f"cannot create dotlock {lock_path}: {e.strerror}") from e
        if key is None:
            key = held_key(lock_path, dir_fd)
        with _held_guard:
            _held.add(key)  # before our pid is in it: never taken for a stale one
        try:
            os.write(fd, b"%d\n" % os.getpid())
        finally:
            os.close(fd)
        return True
    return False


def _create_dotlock(lock_path: str, dir_fd: int | None, key: HeldKey | None = None) -> bool | None:
    """Make the dotlock with our pid in it from its first instant: the pid is written to an
    unnamed file (O_TMPFILE) that is then linked under the lock's name, so that a kill can never
    leave an empty dotlock (which looks like Postfix's and is broken only after 30 s). True:
    made; FileExistsError: someone holds it; None: not possible here (a file system without
    O_TMPFILE, no /proc): the caller makes it with O_EXCL."""
    where = "." if dir_fd is not None else os.path.dirname(os.path.abspath(lock_path))
    try:
        fd = os.open(where, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise
    key = key or held_key(lock_path, dir_fd)
    try:
        os.write(fd, b"%d\n" % os.getpid())
        with _held_guard:
            added = key not in _held  # else held by another thread of ours: it stays so
            _held.add(key)  # before the name exists: never taken for a stale one
        try:
            os.link(f"/proc/self/fd/{fd}", lock_path, dst_dir_fd=dir_fd, follow_symlinks=True)
        except OSError as e:
            if added:
                with _held_guard:
                    _held.discard(key)
            if isinstance(e, FileExistsError):
                raise
            if e.errno in (errno.ENOENT, errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                return None  # no /proc, or links refused here
            raise
    finally:
        os.close(fd)
    return True


def release_dotlock(lock_path: str, dir_fd: int | None = None, key: HeldKey | None = None) -> None:
    if key is None:
        key = held_key(lock_path, dir_fd)
    with suppress(FileNotFoundError):
        os.unlink(lock_path, dir_fd=dir_fd)
    with _held_guard:
        _held.discard(key)  # after the unlink: see stale_dotlock


@dataclass
class HeldLock:
    """Both locks on one mailbox; ``fd`` is the locked open mailbox (None: the file is missing)
    and ``st`` its fstat taken once both locks were held."""

    path: str
    fd: int | None
    dir_fd: int | None = None  # ``path`` is a name in this directory
    st: os.stat_result | None = None

    @property
    def lock_path(self) -> str:
        return self.path + ".lock"

    def touch(self) -> None:
        """Keep the dotlock from looking stale during a long rewrite."""
        with suppress(OSError):
            os.utime(self.lock_path, dir_fd=self.dir_fd, follow_symlinks=False)


def _same_file(fd: int, path: str, dir_fd: int | None = None) -> os.stat_result | None:
    """The fstat of ``fd`` if ``path`` still names that file, else None."""
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    fst = os.fstat(fd)
    return fst if (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev) else None


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
    full_path: str | None = None,
    dir_ident: tuple[int, int] | None = None,
) -> Iterator[HeldLock]:
    """Lock the mailbox at ``path``: dotlock, then ``opener()`` opens it, then the fcntl lock.

    ``opener`` returns a descriptor (closed here when done) or None when the file does not exist
    (then only the dotlock is held). After locking, the descriptor must still be the file at
    ``path`` (another program may have replaced it meanwhile): if not, open again.
    Both locks are always released, the fcntl lock first, as Postfix does. With ``dir_fd``
    (the mailbox's directory, held open) ``path`` is the mailbox's name in it, and
    ``full_path`` its whole path (for messages and ``LockTimeout.lock_path``), ``dir_ident``
    the directory's (st_dev, st_ino) if known (``safepath.Dir.ident``).
    """
    deadline = clock() + timeout
    delay = 0.01
    lock_path = path + ".lock"
    key = held_key(lock_path, dir_fd, dir_ident) if dir_ident is not None else None
    while True:
        if try_dotlock(lock_path, stale_after, dir_fd=dir_fd, key=key):
            key = key or held_key(lock_path, dir_fd)
            fd = None
            try:
                fd = opener()
                st = None
                if fd is None or (
                    try_fcntl_lock(fd, exclusive) and (st := _same_file(fd, path, dir_fd))
                ):
                    try:
                        yield HeldLock(path, fd, dir_fd, st)
                    finally:
                        if fd is not None:
                            fcntl_unlock(fd)
                    return
            finally:
                if fd is not None:
                    os.close(fd)
                release_dotlock(lock_path, dir_fd, key)
        if clock() >= deadline:
            shown = full_path or path
            raise LockTimeout(
                f"{shown} is locked by another program (waited {timeout:g}s)", shown + ".lock"
            )
        sleep(delay)
        delay = min(delay * 2, 0.5)
