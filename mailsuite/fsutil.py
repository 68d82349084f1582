"""Durability helpers shared by the store, the queue and the maildrop."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable


def fsync_dir(directory: str) -> None:
    """Make a new, renamed or removed entry of ``directory`` durable (fsync of the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_syncfs = _load_syncfs()


def fsync_entry(directory: str, fd: int) -> None:
    """Make the entry just renamed into ``directory`` for the open file ``fd`` durable.

    The fsync of the directory needs read permission on it, which a user dropping into a
    1733 directory (``maildrop/``) lacks (EACCES); then ``syncfs(2)`` of the file system that
    holds ``fd`` commits it (it reports write-back errors since Linux 5.8; ``sync()`` where
    there is no syncfs). Raises OSError when the entry may not be on disk."""
    try:
        fsync_dir(directory)
        return
    except PermissionError:
        pass
    if _syncfs is None:
        os.fsync(fd)
        os.sync()
    elif _syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), directory)


def write_synced(
    path: str, data: bytes, owner: tuple[int, int] | None = None, dir_fd: int | None = None
) -> None:
    """Write ``data`` to a new file ``path`` (one left by a crash is replaced; never through a
    symlink), mode 0600, owned by ``owner`` (uid, gid) if given, fsync'ed: ready to be renamed
    over the file it replaces. Nothing is left at ``path`` if it fails. With ``dir_fd`` (a
    directory held open) ``path`` is a name in it."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
        dir_fd=dir_fd,
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path, dir_fd=dir_fd)
        raise
    os.close(fd)


# sync_file_range(2) flags (linux/fs.h)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


class WriteBehind:
    """Writes a big new file to disk while it is being written, not all at the final fsync.

    Every ``window`` bytes, writeback of the window just written starts (``sync_file_range``
    WRITE, which returns at once), and the writeback of the window before it is waited for.
    The disk works while the file is still being produced, the file's dirty pages stay at about
    two windows (so the kernel's dirty-page limits never make the flusher write other files'
    pages, or throttle us, first), and the closing ``fsync`` (still needed: this says nothing
    about the metadata or durability) has little left to do. Without ``sync_file_range`` (not
    Linux) it does nothing. Blocking: call it from the thread writing the file.
    """

    def __init__(self, fd: int, window: int = 32 << 20) -> None:
        self.fd, self.window = fd, window
        self.started = 0  # writeback started for [0, started)
        self.waited = 0  # and finished for [0, waited)

    def wrote(self, end: int) -> None:
        """The file now has ``end`` bytes."""
        if _sync_file_range is None or end - self.started < self.window:
            return
        if _sync_file_range(self.fd, self.started, end - self.started, _WRITE) != 0:
            return  # EINVAL, ESPIPE...: the final fsync does it all
        if self.started > self.waited:
            _sync_file_range(
                self.fd,
                self.waited,
                self.started - self.waited,
                _WAIT_BEFORE | _WRITE | _WAIT_AFTER,
            )
            self.waited = self.started
        self.started = end
